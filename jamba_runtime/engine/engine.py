"""The step loop: admit requests, schedule a step, run it, sample, detokenise, stop, free.

`LLMEngine` is single-threaded; `LLM` drives it to completion and `AsyncLLM` drives it from a
background thread for many concurrent streams. A decode step may be launched before the last
step's tokens are read (`ahead.py`): a step then returns the last step's outputs.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent import futures

import torch

from jamba_runtime.cache.manager import CacheManager
from jamba_runtime.cache.paged import (
    PagedHybridCache,
    block_bytes,
    resolve_kv_cache_dtype,
    resolve_ssm_dtype,
    slot_bytes,
)
from jamba_runtime.engine.ahead import StepsAhead
from jamba_runtime.engine.config import CPU_LONG_PREFILL_TOKENS, EngineConfig
from jamba_runtime.engine.graphs import DecodeGraphs, capture_blocker
from jamba_runtime.engine.memory_plan import engine_memory_plan
from jamba_runtime.engine.metrics import EngineMetrics, RequestStats
from jamba_runtime.engine.outputs import StepOutput
from jamba_runtime.engine.prompt_encoder import PromptEncoder
from jamba_runtime.engine.runner import ModelRunner
from jamba_runtime.engine.sampler import logprobs_of, sample_sequences
from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.engine.scheduler import Scheduler, SchedulerConfig
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.engine.snapshots import Snapshot, SnapshotStore
from jamba_runtime.engine.tensor_parallel import (
    StepChannel,
    TensorParallelRunner,
    cache_spec,
    mirror_cache_copies,
)
from jamba_runtime.errors import InvalidRequestError, RequestNotFoundError
from jamba_runtime.model.modeling import JambaForCausalLM
from jamba_runtime.model.tp_layers import TensorParallelGroup
from jamba_runtime.structured.compiler import GrammarCompiler
from jamba_runtime.structured.spec import StructuredOutput
from jamba_runtime.structured.step_masks import MaskWorker
from jamba_runtime.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_GIB = 1 << 30


class LLMEngine:
    """Continuous batching over a paged hybrid cache.

    Example:
        >>> engine = LLMEngine(model, tokenizer, EngineConfig(max_num_seqs=16))
        >>> engine.add_request([1, 5, 9], SamplingParams(max_tokens=8), request_id="a")
        >>> while engine.has_unfinished():
        ...     for out in engine.step():
        ...         print(out.request_id, out.text, out.finished)
    """

    def __init__(
        self,
        model: JambaForCausalLM,
        tokenizer: Tokenizer,
        config: EngineConfig | None = None,
        tp: TensorParallelGroup | None = None,
    ) -> None:
        """`tp`: this process is rank 0 of a tensor-parallel group and `model` its shard; the
        other ranks run `tensor_parallel.follow` (`LLM(..., tensor_parallel_size=N)` sets it up)."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = cfg = config or EngineConfig()
        mcfg = model.config
        kv_dtype = resolve_kv_cache_dtype(cfg.kv_cache_dtype, model.dtype)
        ssm_dtype = resolve_ssm_dtype(cfg.mamba_ssm_dtype)
        tp_size = tp.world_size if tp is not None else 1
        budget = self._cache_budget(cfg)
        num_slots = cfg.max_num_seqs + cfg.num_snapshot_slots
        per_block = max(block_bytes(mcfg, cfg.block_size, kv_dtype, tp_size), 1)
        num_blocks = (budget - num_slots * slot_bytes(mcfg, model.dtype, ssm_dtype, tp_size)) // per_block
        if num_blocks < 1:
            raise InvalidRequestError(
                f"cache budget of {budget / _GIB:.2f} GiB holds no KV block after {num_slots} state slots: "
                "raise cache_memory_gb or lower max_num_seqs"
            )
        if not mcfg.attention_layers:
            num_blocks = 1  # no attention layer: blocks cost nothing, one stands in for bookkeeping
        self.cache_manager = CacheManager(num_blocks, cfg.block_size, num_slots)
        self.cache = PagedHybridCache(
            mcfg,
            num_blocks,
            cfg.block_size,
            num_slots,
            model.dtype,
            model.device,
            ssm_dtype,
            kv_dtype,
            tp_size,
        )
        long_prefill = cfg.long_prefill_token_threshold
        if long_prefill is None:
            long_prefill = CPU_LONG_PREFILL_TOKENS if model.device.type == "cpu" else 0
        self.scheduler = Scheduler(
            SchedulerConfig(cfg.max_num_seqs, cfg.max_num_batched_tokens, long_prefill), self.cache_manager
        )
        capacity = num_blocks * cfg.block_size if mcfg.attention_layers else mcfg.max_position_embeddings
        limit = min(mcfg.max_position_embeddings, capacity)
        if cfg.max_model_len is not None:
            if cfg.max_model_len > limit:
                raise InvalidRequestError(
                    f"max_model_len={cfg.max_model_len:,} is more than the model or cache holds ({limit:,} tokens): "
                    "lower it or raise cache_memory_gb"
                )
            limit = cfg.max_model_len
        self.max_model_len = limit
        graphs = None
        if cfg.cuda_graphs and model.device.type == "cuda":
            blocker = capture_blocker(model)
            if blocker is None:
                graphs = DecodeGraphs(model, self.cache, cfg.max_num_seqs, limit)
            else:
                logger.info("decode steps run without CUDA graphs: %s", blocker)
        self.channel: StepChannel | None = None
        if tp_size > 1:
            assert tp is not None
            # The other ranks build the same blocks, slots and graphs, then follow every step.
            self.channel = StepChannel(tp)
            self.channel.send(("cache", cache_spec(self.cache, graphs)))
            mirror_cache_copies(self.cache, self.channel)
            self.runner: ModelRunner = TensorParallelRunner(model, self.cache, self.channel, graphs)
        else:
            self.runner = ModelRunner(model, self.cache, graphs=graphs)
        logger.info("%s", engine_memory_plan(model, cfg, limit, tp_size).summary())
        self.eos_token_ids = frozenset(mcfg.eos_token_id) | frozenset(tokenizer.eos_token_ids)
        self.prompt_encoder = PromptEncoder(tokenizer)
        self.requests: dict[str, Sequence] = {}
        self.snapshot_store = SnapshotStore(self.cache_manager, self.cache, cfg.num_snapshot_slots)
        self.snapshots: dict[str, Snapshot] = self.snapshot_store.snapshots  # the same dict, read-only use
        self._save_snapshot_as: dict[str, str] = {}
        self._ids = itertools.count()
        self._stats = RequestStats()
        self._grammars: GrammarCompiler | None = None
        self._masks = MaskWorker(lambda: self.grammars)
        self._grammars_lock = threading.Lock()
        ahead = cfg.async_scheduling if cfg.async_scheduling is not None else model.device.type == "cuda"
        self._ahead = StepsAhead(
            self.scheduler,
            self.runner,
            self._masks,
            cfg.max_num_batched_tokens,
            enabled=ahead and tp_size == 1,
        )

    def _cache_budget(self, cfg: EngineConfig) -> int:
        if cfg.cache_memory_gb is not None:
            return int(cfg.cache_memory_gb * _GIB)
        if self.model.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.model.device)
            return int(free * cfg.gpu_memory_utilization)
        return _GIB

    # ---- requests --------------------------------------------------------------------------------
    @property
    def grammars(self) -> GrammarCompiler:
        """The structured-output compiler for this engine's tokenizer and vocab (made on first use;
        any thread)."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(
                    self.tokenizer, self.model.config.vocab_size, self.eos_token_ids
                )
            return self._grammars

    def check_structured(self, spec: StructuredOutput) -> None:
        """Compile `spec` now (cached for the request that uses it). Any thread may call it, so a
        server can refuse a request before queuing it. Raises `InvalidRequestError` naming what
        constrained decoding cannot enforce (e.g. an unsupported JSON Schema keyword)."""
        self.grammars.check(spec)

    def prompt_ids(self, prompt: str | list[int], params: SamplingParams | None = None) -> list[int]:
        """Tokenize (text) or check (ids) a prompt as `add_request` will take it; with `params`,
        also compile its structured-output spec (`check_structured`). Reads no engine state that
        steps change, so another thread may call it.

        Raises `InvalidRequestError` for empty text or ids, non-integer ids or ids outside the
        vocab, or a structured-output spec that cannot be enforced; `ContextLengthError` when the
        prompt leaves no room for a new token. Text that cannot fit is refused after tokenizing
        about `max_model_len` tokens' worth of it, however long it is (`encode_prompt`)."""
        if params is not None and params.structured is not None:
            self.check_structured(params.structured)
        return self.prompt_encoder.prompt_ids(prompt, self.max_model_len, self.model.config.vocab_size)

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenize prompt text (a rendered chat included: `add_special_tokens=False`) for this
        engine's context. Any thread may call it.

        Raises `ContextLengthError` when the text has `max_model_len` tokens or more, found
        without tokenizing all of a long text (`prompt_encoder.PromptEncoder`)."""
        return self.prompt_encoder.encode(text, self.max_model_len, add_special_tokens)

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        prefix_snapshot: str | None = None,
        save_snapshot: str | None = None,
        arrival_time: float | None = None,
    ) -> Sequence:
        """Queue a request (text or token ids). Raises what `prompt_ids` raises, and
        `InvalidRequestError` for a duplicate id or a structured-output spec that cannot be
        enforced (compiled here, once per spec).
        A request whose prompt + max_tokens passes `max_model_len` stops there ("length").

        `prefix_snapshot`: start from a saved snapshot whose tokens begin this prompt (ignored when
        they do not, or when the prompt is no longer than them). `save_snapshot`: save this
        request's state at the end of its prompt under that key. `arrival_time`: when the
        request arrived (`time.monotonic()`; default now), where its queue time starts
        (`metrics().queue_time`): a caller that hands requests over from another thread passes
        the time it was asked.
        """
        ids = self.prompt_ids(prompt)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if save_snapshot is not None and self.config.num_snapshot_slots == 0:
            raise InvalidRequestError(
                "this engine keeps no prefix snapshots (num_snapshot_slots=0): raise num_snapshot_slots "
                "to save one"
            )
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running: use a new id")
        spec = params.structured
        grammar = self.grammars.matcher(spec, stagger=sum(ids[-4:])) if spec is not None else None
        seq = Sequence(
            prompt_token_ids=ids,
            params=params,
            # With tools, keep special tokens: the <tool_calls> tag stays in the text (parse_tool_calls).
            decoder=self.tokenizer.incremental_decoder(
                skip_special_tokens=spec is None or spec.tools is None
            ),
            eos_token_ids=self.eos_token_ids,
            max_new_tokens=min(params.max_tokens, self.max_model_len - len(ids)),
            request_id=request_id,
            priority=priority,
            grammar=grammar,
        )
        if prefix_snapshot is not None:
            self.snapshot_store.restore(seq, prefix_snapshot)
        if save_snapshot is not None:
            self._save_snapshot_as[request_id] = save_snapshot
        self.requests[request_id] = seq
        self._stats.arrived(request_id, len(ids), time.monotonic() if arrival_time is None else arrival_time)
        self.scheduler.add(seq)
        return seq

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks and slot now. Raises `RequestNotFoundError` for an
        id that is not running (unknown, or already finished)."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            raise RequestNotFoundError(f"no running request with id {request_id!r}")
        seq.finish_reason = "abort"
        seq.unreserve_token()
        self.scheduler.finish(seq)
        self._save_snapshot_as.pop(request_id, None)
        self._stats.left(request_id)
        self._ahead.drop_ended(self.requests)

    def has_unfinished(self) -> bool:
        """Whether a request is queued or running, or a step's tokens are still to be read."""
        return self.scheduler.has_unfinished() or self._ahead.in_flight is not None

    def release_idle_memory(self) -> None:
        """Give the GPU memory that PyTorch's allocator keeps cached from the last burst back to the
        device (the cache blocks, slots and CUDA graph pools stay), so an idle server is back at its
        idle level. `AsyncLLM`'s loop calls this after `IDLE_RELEASE_S` without work; on CPU it does nothing."""
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self) -> int:
        """Before serving: run one short request through a prefill and a decode step (the
        kernels' first compiles; on a GPU beside a prompt one step's budget long, whose second
        chunk attends to its cached first one as a long prompt's last chunk does), then, on one
        GPU, capture every decode graph size, so that no user request pays for either (a
        compile or a capture takes a second or two, and stalls every stream). Leaves the engine
        as it was: idle, its cache free, its metrics at zero. Returns how many graphs were
        captured (0 on CPU, and with tensor parallel, whose ranks capture together as sizes
        come up)."""
        if self.has_unfinished():
            raise InvalidRequestError("warm_up needs an idle engine: call it before adding requests")
        vocab = self.model.config.vocab_size
        params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
        self.add_request([i % vocab for i in range(100, 133)], params, "warm-up")
        long = min(self.config.max_num_batched_tokens + 40, self.max_model_len - 2)
        if self.model.device.type == "cuda" and long > 33:
            self.add_request([i % vocab for i in range(200, 200 + long)], params, "warm-up-long")
        while self.has_unfinished():
            self.step()
        self._stats = RequestStats()
        graphs = self.runner.graphs
        return graphs.capture_all() if graphs is not None and self.channel is None else 0

    # ---- the step --------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Schedule and run one step; return what each request got from it. When the last step's
        tokens are still on the device, launch the next decode step if it may run ahead
        (`ahead.py`), then read them: the outputs returned are the last step's."""
        if self._ahead.in_flight is not None:
            return self._step_ahead()
        plan = self.scheduler.schedule()
        self._stats.preemptions += len(plan.preempted)
        while not plan.scheduled and self.scheduler.num_waiting and not self.scheduler.num_running:
            # Nothing runs, so the blocks or slots the first waiting request needs are held by
            # snapshots or by requests restored from them that wait behind it. Give up snapshots,
            # oldest first, then those requests' restored prefixes (they are recomputed).
            if self.snapshots:
                self.snapshot_store.drop_oldest()
            elif not self.scheduler.release_waiting_holds():
                break
            plan = self.scheduler.schedule()
            self._stats.preemptions += len(plan.preempted)
        if not plan.scheduled:
            assert not self.scheduler.num_waiting or self.scheduler.num_running, (
                "add_request keeps every request admissible"
            )
            return []
        # The grammar masks depend only on the matchers, known now: llguidance fills them on a
        # worker thread while this one launches the forward; the budget logic runs here after the
        # launch (structured/step_masks.py). The samplers are the runner's `to_sample`.
        samplers = [
            i.seq for i in plan.scheduled if i.seq.num_computed_tokens + i.num_tokens == i.seq.num_tokens
        ]
        start = time.monotonic()
        for item in plan.scheduled:
            if not item.seq.output_token_ids:  # still in its prompt: its queue time may end here
                self._stats.running(item.seq.request_id, start)
        masks = self._masks.start(samplers)
        try:
            to_sample, logits = self.runner.execute(plan)
        finally:
            if masks is not None:
                futures.wait([masks])  # the worker never outlives the step (it owns the matchers meanwhile)
        assert [id(s) for s in to_sample] == [id(s) for s in samplers], (
            "the runner samples what the plan says"
        )
        for item in plan.scheduled:
            item.seq.num_computed_tokens += item.num_tokens
        outputs: list[StepOutput] = []
        if not to_sample:
            return outputs
        for seq in to_sample:
            if seq.request_id in self._save_snapshot_as and seq.num_computed_tokens == len(
                seq.prompt_token_ids
            ):
                self.snapshot_store.save(self._save_snapshot_as.pop(seq.request_id), seq)
        step_masks = self._masks.finish(masks.result()) if masks is not None else (None, [], set())
        if len(to_sample) == len(plan.scheduled) and self._ahead.start(to_sample, logits, step_masks):
            return outputs  # the next step() launches its decode, then reads these tokens
        bitmask, mask_rows, broken = step_masks
        tokens = sample_sequences(to_sample, logits, bitmask, mask_rows)
        self._take_tokens(to_sample, tokens, logits, broken, outputs)
        return outputs

    def _take_tokens(
        self,
        seqs: list[Sequence],
        tokens: list[int | BaseException],
        logits: torch.Tensor | None,
        broken: set[int],
        outputs: list[StepOutput],
    ) -> None:
        """Give each sequence its token (`_take_token`); one request's failure (its sampling,
        grammar or detokenizing) ends that request alone, the batch goes on."""
        now = time.monotonic()
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            try:
                self._take_token(seq, row, token, logits, row in broken, now, outputs)
            except Exception as exc:  # noqa: BLE001 - logged with its traceback, the request fails
                logger.exception("request %s failed in its step", seq.request_id)
                self._fail_request(seq, f"{type(exc).__name__}: {exc}", outputs)
        self._stats.step_done(now, len(tokens))

    def _step_ahead(self) -> list[StepOutput]:
        """Launch the next decode step if it may run ahead, then read the last step's tokens."""
        last = self._ahead.advance(self.requests)
        live = [(row, s) for row, s in enumerate(last.seqs) if self.requests.get(s.request_id) is s]
        tokens = last.read()  # rows of requests aborted meanwhile are dropped
        broken = {i for i, (row, _) in enumerate(live) if row in last.broken}
        outputs: list[StepOutput] = []
        self._take_tokens([s for _, s in live], [tokens[row] for row, _ in live], None, broken, outputs)
        self._ahead.sample_launched(self.requests)
        self._ahead.drop_ended(self.requests)
        return outputs

    def _take_token(
        self,
        seq: Sequence,
        row: int,
        token: int | BaseException,
        logits: torch.Tensor | None,
        grammar_broken: bool,
        now: float,
        outputs: list[StepOutput],
    ) -> None:
        """Give `seq` its sampled token: grammar, logprobs, text, stop checks, and its output."""
        if isinstance(token, BaseException):
            raise token
        if token < 0:
            self._fail_request(
                seq,
                "the model's next-token distribution for this request has no usable value (NaN logits, "
                "or no token left after the structured-output mask and the sampling filters)",
                outputs,
            )
            return
        if seq.grammar is not None:
            # The grammar may replace the token to finish within max_tokens (structured/closing.py).
            token = (
                -1 if grammar_broken else seq.grammar.take(token, seq.max_new_tokens - seq.num_output_tokens)
            )
            if token < 0:
                self._end_broken_grammar(seq, outputs)
                return
        self._stats.generated_token(seq.request_id, seq.num_output_tokens == 0, now)
        lp = None
        if seq.params.logprobs is not None:
            assert logits is not None, "a request with logprobs never runs ahead"
            lp = [logprobs_of(logits[row], token, seq.params.logprobs)]
        text = seq.append_token(token)
        outputs.append(StepOutput(seq.request_id, text, [token], seq.finished, seq.finish_reason, lp))
        if seq.finished:
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        """A finished request gives back its cache and leaves the engine's books."""
        seq.unreserve_token()
        self.scheduler.finish(seq)
        self.requests.pop(seq.request_id, None)
        self._stats.left(seq.request_id)
        self._save_snapshot_as.pop(seq.request_id, None)

    def _fail_request(self, seq: Sequence, error: str, outputs: list[StepOutput]) -> None:
        """End `seq` with finish_reason "error" (its cache freed); the other requests go on."""
        seq.finish_reason = "error"
        seq.error = error
        outputs.append(StepOutput(seq.request_id, "", [], True, "error", error=error))
        self._release(seq)

    def _end_broken_grammar(self, seq: Sequence, outputs: list[StepOutput]) -> None:
        """A matcher in error (an llguidance limit or bug): end that request ("abort") rather
        than emit a token the grammar did not allow; the others go on."""
        assert seq.grammar is not None
        logger.error("request %s: structured output stopped: %s", seq.request_id, seq.grammar.error())
        seq.finish_reason = "abort"
        outputs.append(StepOutput(seq.request_id, "", [], True, "abort"))
        self._release(seq)

    # ---- snapshots -------------------------------------------------------------------------------
    def drop_snapshot(self, key: str) -> None:
        """Forget a prefix snapshot (its blocks and slot return to the pool); no-op if unknown."""
        self.snapshot_store.drop(key)

    # ---- metrics ---------------------------------------------------------------------------------
    def metrics(self) -> EngineMetrics:
        """Counts and rates now. Changes nothing (the rate window is trimmed by `step`)."""
        cm, stats = self.cache_manager, self._stats
        return EngineMetrics(
            waiting=self.scheduler.num_waiting,
            running=self.scheduler.num_running,
            kv_blocks_used=cm.num_used_blocks,
            kv_blocks_total=cm.num_blocks,
            state_slots_used=cm.num_used_slots,
            state_slots_total=cm.num_slots,
            snapshots=len(self.snapshots),
            prompt_tokens_total=stats.prompt_tokens,
            generation_tokens_total=stats.generated,
            generation_tokens_per_s=stats.tokens_per_s,
            mean_time_to_first_token_s=stats.mean_time_to_first_token_s,
            preemptions_total=stats.preemptions,
            steps_ahead_total=self._ahead.launched,
            queue_time=stats.queue_time,
            prefill_time=stats.prefill_time,
        )

    def check_cache(self) -> None:
        """Assert exact cache counts against every holder (running sequences and snapshots)."""
        holders = [s.alloc for s in self.scheduler.running + self.scheduler.waiting]
        holders += [s.alloc for s in self.snapshots.values()]
        self.cache_manager.check(holders)
