"""Decode steps launched before the last step's tokens are read (asynchronous scheduling).

Between two decode steps the host reads the sampled tokens, detokenizes them, checks stops, hands
out the outputs, then schedules and stages the next step; without overlap the GPU waits through
all of it (about 0.3 ms a step at batch 1 and 2-3 ms at batch 64 on an H100: bench/NOTES.md).
When every running sequence was sampled in the last step and none needs the host to see its token
before its next forward, the engine launches the next decode step first, feeding each sequence
the token the last step sampled for it on the device, and reads the last step's tokens while the
new step runs. Tokens, texts and finish reasons are the same as without it (a seeded row's draw
depends on its output position only, which is known before the token is read).

What keeps a step from being launched ahead (it then waits for the tokens, as before): a request
waiting to start while the batch has room for it (with every slot taken it waits either way, and
starts one step later than it would have when a sequence ends), a prompt still being prefilled, a repetition penalty (it reads the seen tokens),
logprobs (read from the step's logits with the token), a grammar that may replace the token
sampled (`GrammarMatcher.may_replace`: a closing path planned near `max_tokens`), tensor parallel
(the other ranks get their tokens from the host), or no KV block free for a sequence's next token.
Rows with a grammar run ahead otherwise: the next step's forward is launched first, and their
masks are made once the last step's tokens are taken (they depend on them), while that forward
runs; the rows are sampled after. A sequence whose last token ends it by length is left out of
the step launched ahead; one whose last token ends it otherwise (end of sequence, a stop string,
a complete grammar) has run one step too many: that step's token is dropped. Its cache is freed
while that step may still run, which is safe because every step runs on one stream: a later step
that reuses the blocks or the slot is queued behind it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from jamba_runtime.engine.runner import ModelRunner
from jamba_runtime.engine.sampler import sample_sequences, sample_sequences_on_device
from jamba_runtime.engine.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.structured.step_masks import MaskWorker, StepMasks

logger = logging.getLogger(__name__)


def samples_on_device(seq: Sequence) -> bool:
    """Whether `seq`'s token can be sampled without the host reading anything of this step: no
    repetition penalty (it reads the seen tokens) and no logprobs (read from the logits)."""
    return seq.params.repetition_penalty == 1.0 and seq.params.logprobs is None


def runs_ahead(seq: Sequence) -> bool:
    """Whether `seq`'s next step may run before the host reads the token sampled for it: it
    samples on the device, and a grammar, if any, will take that very token (`may_replace`)."""
    return samples_on_device(seq) and (seq.grammar is None or not seq.grammar.may_replace())


@dataclass
class InFlight:
    """A step's sampled tokens, on their way to the host.

    Attributes:
        seqs: the step's sampled sequences, in row order.
        tokens: `(len(seqs),)` int64 on the model's device, -1 where a row had no usable
            distribution.
        errors: rows whose sampling raised (when the batch could not be sampled at once), with
            the exception that fails that request alone.
        broken: rows whose grammar matcher was in error when its mask was made (the request ends
            when the token is read).
    """

    seqs: list[Sequence]
    tokens: torch.Tensor
    errors: dict[int, BaseException] = field(default_factory=dict)
    broken: set[int] = field(default_factory=set)
    _host: torch.Tensor | None = None
    _ready: torch.cuda.Event | None = None

    @classmethod
    def sample(
        cls, seqs: list[Sequence], logits: torch.Tensor, masks: StepMasks = (None, [], set())
    ) -> InFlight:
        """Sample `seqs` (rows of `logits`) on the device under their grammar `masks` and start
        copying the tokens to the host. If sampling the batch raises, each row is sampled alone
        now (`sample_sequences`), so that only the rows that raise fail."""
        bitmask, mask_rows, broken = masks
        try:
            tokens = sample_sequences_on_device(seqs, logits, bitmask, mask_rows)
            errors: dict[int, BaseException] = {}
        except Exception:  # noqa: BLE001 - narrowed to the rows that raise by sample_sequences
            logger.exception("sampling a step launched ahead failed: sampling its rows one at a time")
            picked = sample_sequences(seqs, logits, bitmask, mask_rows)
            errors = {i: t for i, t in enumerate(picked) if isinstance(t, BaseException)}
            host = [t if isinstance(t, int) else -1 for t in picked]
            tokens = torch.tensor(host, dtype=torch.long).to(logits.device)
        flight = cls(seqs, tokens, errors, broken)
        if tokens.device.type == "cuda":
            flight._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            flight._host.copy_(tokens, non_blocking=True)
            flight._ready = torch.cuda.Event()
            flight._ready.record()
        return flight

    def read(self) -> list[int | BaseException]:
        """The tokens on the host (waits for the step to finish), with each failed row's exception."""
        if self._ready is not None:
            self._ready.synchronize()
        host = self._host if self._host is not None else self.tokens
        out: list[int | BaseException] = host.tolist()
        for row, exc in self.errors.items():
            out[row] = exc
        return out

    def feed(self, seqs: list[Sequence]) -> torch.Tensor:
        """The input tokens of the next step of `seqs` (each one ran in this step), in their
        order, on the device. A row without a usable token gets id 0: its request fails when the
        host reads it, and the step's result for it is dropped."""
        if len(seqs) == len(self.seqs) and all(a is b for a, b in zip(seqs, self.seqs, strict=True)):
            picked = self.tokens
        else:
            row = {id(s): i for i, s in enumerate(self.seqs)}
            index = torch.tensor([row[id(s)] for s in seqs])
            picked = self.tokens[index.to(self.tokens.device, non_blocking=True)]
        return picked.clamp(min=0)


class StepsAhead:
    """The engine's step launched ahead, if any, and the decision to launch one.

    Example (what `LLMEngine.step` does):
        >>> if ahead.in_flight is not None:
        ...     last = ahead.advance(engine.requests)  # maybe launches the next decode step
        ...     tokens = last.read()                    # waits for the last step's tokens
        ...     ...                                     # the engine takes them (grammars too)
        ...     ahead.sample_launched(engine.requests)  # rows with grammars are sampled now
        ... elif ahead.start(sampled_seqs, logits, masks):
        ...     pass                                    # tokens are read at the next step
    """

    def __init__(
        self, scheduler: Scheduler, runner: ModelRunner, masks: MaskWorker, budget: int, enabled: bool
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.masks = masks
        self.budget = budget
        self.enabled = enabled
        self.in_flight: InFlight | None = None
        self.launched = 0
        """Steps launched ahead so far."""
        # A step launched ahead with grammar rows: its masks need the last step's tokens taken.
        self._unsampled: tuple[list[Sequence], torch.Tensor] | None = None

    def start(self, seqs: list[Sequence], logits: torch.Tensor, masks: StepMasks) -> bool:
        """After a step that sampled `seqs` (every sequence it ran) under `masks`: if all that run
        are these and each samples on the device, sample them there and keep the tokens in flight
        (True: the caller reads nothing now); else False (the caller samples on the host)."""
        if not (
            self.enabled
            and len(seqs) == self.scheduler.num_running
            and all(samples_on_device(s) for s in seqs)
        ):
            return False
        self.in_flight = InFlight.sample(seqs, logits, masks)
        return True

    def advance(self, requests: dict[str, Sequence]) -> InFlight:
        """Take the step in flight, and launch the next decode step of its sequences that go on
        when it may run ahead. `requests`: the engine's running requests (a sequence aborted
        meanwhile is not among them). Returns the step taken; the caller reads and takes its
        tokens, then calls `sample_launched`."""
        last, self.in_flight = self.in_flight, None
        assert last is not None, "nothing in flight"
        self._launch(last, requests)
        return last

    def drop_ended(self, requests: dict[str, Sequence]) -> None:
        """Forget the step in flight when none of its requests goes on (every one ended or was
        aborted): nothing is left to read, and the engine is idle as soon as its queue is."""
        flight = self.in_flight
        if flight is not None and not any(requests.get(s.request_id) is s for s in flight.seqs):
            self.in_flight = None

    def sample_launched(self, requests: dict[str, Sequence]) -> None:
        """Sample the step launched ahead if its rows need grammar masks (they depend on the
        tokens just taken; the forward runs meanwhile). Rows whose request ended are dropped."""
        if self._unsampled is None:
            return
        seqs, logits = self._unsampled
        self._unsampled = None
        live = [i for i, s in enumerate(seqs) if requests.get(s.request_id) is s]
        if not live:
            return
        if len(live) < len(seqs):
            seqs = [seqs[i] for i in live]
            logits = logits[torch.tensor(live).to(logits.device, non_blocking=True)]
        pending = self.masks.start(seqs)
        masks = self.masks.finish(pending.result()) if pending is not None else (None, [], set())
        self.in_flight = InFlight.sample(seqs, logits, masks)

    def _launch(self, last: InFlight, requests: dict[str, Sequence]) -> None:
        sched = self.scheduler
        if sched.num_waiting and sched.num_running < sched.config.max_num_seqs:
            return  # a waiting request may start in the next step: the scheduler decides
        live = [s for s in last.seqs if requests.get(s.request_id) is s]
        if len(live) != sched.num_running or not all(runs_ahead(s) for s in live):
            return  # another sequence runs (a prompt under way), or a token must be seen first
        # A sequence whose last token is its max_tokens-th ends with it, whatever it is.
        seqs = [s for s in live if len(s.output_token_ids) + 1 < s.max_new_tokens]
        if not seqs or len(seqs) > self.budget:
            return
        cm = sched.cache
        need = sum(max(0, cm.blocks_for(s.num_tokens + 1) - len(s.alloc.block_table)) for s in seqs)
        if need > cm.num_free_blocks:
            return  # the scheduler preempts, once the tokens are read
        for s in seqs:
            s.reserve_token()
            cm.ensure_blocks(s.alloc, s.num_tokens)
        step = SchedulerOutput([ScheduledSeq(s, 1) for s in seqs], [])
        logits = self.runner.execute_fed(step, last.feed(seqs))
        for s in seqs:
            s.num_computed_tokens += 1
        self.launched += 1
        if any(s.grammar is not None for s in seqs):
            self._unsampled = (seqs, logits)
        else:
            self.in_flight = InFlight.sample(seqs, logits)
