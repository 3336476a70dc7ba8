"""Per-request state: prompt, output so far, detokenised text, stop checks, finish reason."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Protocol

from jamba_runtime.cache.manager import CacheAllocation
from jamba_runtime.engine.outputs import RequestOutput
from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.structured.matcher import GrammarMatcher

_ids = itertools.count()

RESERVED_TOKEN = 0
"""What a reserved place holds until its token is read: a valid id, never fed to the model (the
step that computes it takes the sampled token from the device)."""


class TextDecoder(Protocol):
    """Turns tokens into text one at a time; `add` returns only new, complete characters."""

    def add(self, token_id: int) -> str: ...

    def flush(self) -> str:
        """Whatever text is still held back (an incomplete character at the very end)."""
        ...


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """One request while it runs.

    `num_computed_tokens` of its `num_tokens` (prompt + output) are in the cache; the scheduler
    feeds the rest, in chunks, and a token is sampled when the two meet. Preemption drops the cache
    and sets `num_computed_tokens` back to 0 (recompute); the tokens themselves are kept.
    """

    prompt_token_ids: list[int]
    params: SamplingParams
    decoder: TextDecoder
    eos_token_ids: frozenset[int]
    max_new_tokens: int
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    output_token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    priority: int = 0
    arrival: int = field(default_factory=lambda: next(_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    alloc: CacheAllocation = field(default_factory=CacheAllocation)
    num_preemptions: int = 0
    grammar: GrammarMatcher | None = None
    error: str | None = None  # why the engine failed this request (finish_reason "error")
    # Whether the last output token is a stand-in for one sampled on the device and not read yet
    # (a step launched ahead, `engine/ahead.py`): `append_token` puts the real one in its place.
    reserved: bool = False
    # The token ids that end the output: [0] while stop token ids apply (`stops_apply`), [1] in a
    # constrained part; set once, read for every token.
    _end_ids: tuple[frozenset[int], frozenset[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        eos = frozenset() if self.params.ignore_eos else self.eos_token_ids
        self._end_ids = (eos | frozenset(self.params.stop_token_ids), eos)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Output tokens taken so far (a reserved place not counted)."""
        return len(self.output_token_ids) - self.reserved

    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_range(self, start: int, end: int) -> list[int]:
        """Tokens `start..end-1` of prompt + output, without copying the whole history."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def stops_apply(self) -> bool:
        """Whether stop strings and stop token ids may end the output now: always without a
        grammar; with one, only in the free text before a tool-call block (the grammar ends the
        constrained part, so a stop can never cut it short)."""
        if self.grammar is None:
            return True
        spec = self.params.structured
        return spec is not None and spec.free_text_first and not self.grammar.in_block

    def reserve_token(self) -> None:
        """Count the token being sampled on the device before it is read: the sequence is one
        token longer (its next step can be scheduled) and `append_token` fills the place."""
        assert not self.reserved, "one token at most is read late"
        self.output_token_ids.append(RESERVED_TOKEN)
        self.reserved = True

    def unreserve_token(self) -> None:
        """Drop a reserved place whose token will never be taken (the request ended)."""
        if self.reserved:
            self.output_token_ids.pop()
            self.reserved = False

    def append_token(self, token_id: int) -> str:
        """Record a sampled token (a grammar has taken it already), in the reserved place if there
        is one; return the text that may be shown now (stop strings held back). With a grammar,
        the output ends ("stop") at an end-of-sequence token or as soon as the grammar is complete."""
        if self.reserved:
            self.output_token_ids[-1] = token_id
            self.reserved = False
        else:
            self.output_token_ids.append(token_id)
        stops_apply = self.stops_apply
        if token_id in self._end_ids[0 if stops_apply else 1]:
            self.finish_reason = "stop"
            self.text += self.decoder.flush()
            return self._flush()
        self.text += self.decoder.add(token_id)
        if self.grammar is not None and self.grammar.is_terminated():
            # Nothing but end-of-sequence could follow: end now rather than spend a step on it.
            self.finish_reason = "stop"
            self.text += self.decoder.flush()
            return self._flush()
        if self.params.stop and stops_apply:
            # Search only where a new match can start: the text added plus the longest stop's reach.
            start = max(0, self.emitted - max(len(s) for s in self.params.stop))
            hits = [i for i in (self.text.find(s, start) for s in self.params.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish_reason = "stop"
                return self._flush()
        if len(self.output_token_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            self.text += self.decoder.flush()
            return self._flush()
        safe = len(self.text) - (_held_back(self.text, self.params.stop) if stops_apply else 0)
        delta = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return delta

    def _flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    def output(self) -> RequestOutput:
        return RequestOutput(
            self.request_id,
            self.prompt_token_ids,
            self.text,
            list(self.output_token_ids),
            self.finish_reason,
            self.error,
        )


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if s.startswith(text[-n:]):
                longest = n
                break
    return longest
