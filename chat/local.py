"""`LocalChatModel`: the chat seam over an in-process `LLM`.

One request at a time (a lock): a stream holds the engine until it is read to the end or closed.
`chat_many` runs its requests as one batch in the engine; `concurrent()` lends the engine to an
asyncio adapter (`jamba_stack.chat.concurrent`) so many agents' turns batch together. For many
concurrent users, run the server.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from jamba_runtime.errors import ContextLengthError, JambaStackError
from jamba_runtime.llm import LLM
from jamba_runtime.sampling_params import SamplingParams
from jamba_stack.chat.format import ToolCallSplitter
from jamba_stack.chat.model import (
    ChatChunk,
    ChatModel,
    ChatRequest,
    ChatResponse,
    ModelInfo,
    Usage,
    response_of,
)


def local_prompt(llm: LLM, request: ChatRequest) -> tuple[list[int], SamplingParams]:
    """The prompt ids and sampling params an in-process model runs for `request` (shared by
    `LocalChatModel` and the asyncio adapter, so both answer alike)."""
    ids = request.inputs.render(llm.tokenizer)
    spec = request.inputs.structured()
    params = SamplingParams(
        max_tokens=min(request.max_tokens, max(llm.max_model_len - len(ids), 1)),
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop,
        **({"structured": spec} if spec is not None else {}),
    )
    return ids, params


def splitter_for(llm: LLM, request: ChatRequest) -> ToolCallSplitter:
    inputs = request.inputs
    return ToolCallSplitter(llm.tokenizer, inputs.tools if inputs.uses_tools else None)


class LocalChatModel(ChatModel):
    """Chat with an in-process `LLM` (`chat_model(path)` makes one).

    Example:
        >>> model = LocalChatModel(LLM("data/models/tiny"))
        >>> model.chat([{"role": "user", "content": "Hi"}], max_tokens=16).content
    """

    def __init__(self, llm: LLM, name: str | None = None) -> None:
        self.llm = llm
        self.name = name or "local"
        self._lock = threading.Lock()

    # ---- the seam --------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenizer.encode(text, add_special_tokens=False))

    def _count_prompt(self, request: ChatRequest) -> int:
        return len(request.inputs.render(self.llm.tokenizer))

    @property
    def context_length(self) -> int:
        return self.llm.max_model_len

    @property
    def max_concurrency(self) -> int:
        return max(1, self.llm.engine.config.max_num_seqs)

    def info(self) -> ModelInfo:
        m = self.llm.engine.metrics()
        param = next(self.llm.model.parameters())
        metrics = {
            "jamba_requests_running": float(m.running),
            "jamba_requests_waiting": float(m.waiting),
            "jamba_kv_blocks_used": float(m.kv_blocks_used),
            "jamba_kv_blocks_total": float(m.kv_blocks_total),
            "jamba_state_slots_used": float(m.state_slots_used),
            "jamba_state_slots_total": float(m.state_slots_total),
            "jamba_prefix_snapshots": float(m.snapshots),
            "jamba_kv_cache_usage_ratio": m.kv_blocks_used / m.kv_blocks_total if m.kv_blocks_total else 0.0,
            "jamba_generation_tokens_per_second": m.generation_tokens_per_s,
            "jamba_mean_time_to_first_token_seconds": m.mean_time_to_first_token_s,
            "jamba_prompt_tokens_total": float(m.prompt_tokens_total),
            "jamba_generation_tokens_total": float(m.generation_tokens_total),
            "jamba_preemptions_total": float(m.preemptions_total),
        }
        return ModelInfo(
            mode="in-process",
            name=self.name,
            device=str(param.device),
            dtype=str(param.dtype).removeprefix("torch."),
            context_length=self.llm.max_model_len,
            metrics=metrics,
        )

    @contextlib.contextmanager
    def concurrent(self, reuse_prefix: bool = True) -> Iterator[ChatModel]:
        """An asyncio adapter over this model's engine (`AsyncLocalChatModel`): concurrent
        `achat` calls batch in it. While the block runs the engine is the adapter's: this
        model's own `chat` waits for it (they share the lock)."""
        from jamba_stack.chat.concurrent import AsyncLocalChatModel

        with self._lock:
            adapter = AsyncLocalChatModel.from_llm(self.llm, reuse_prefix)
            try:
                yield adapter
            finally:
                adapter.close()

    # ---- requests --------------------------------------------------------------------------------
    def _chat(self, request: ChatRequest) -> ChatResponse:
        # Through the stream: the tool-call block is found token by token, as the server does.
        text: list[str] = []
        last = ChatChunk()
        for last in self._stream(request):
            text.append(last.content)
        assert last.usage is not None, "a stream ends with its usage"
        return response_of("".join(text), last.tool_calls, last.finish_reason, last.usage)

    def _stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        ids, params = local_prompt(self.llm, request)
        self.llm.engine.prompt_ids(ids)  # a too-long prompt raises here, not at the first chunk
        return self._run(ids, params, splitter_for(self.llm, request))

    def _run(self, ids: list[int], params: SamplingParams, splitter: ToolCallSplitter) -> Iterator[ChatChunk]:
        engine = self.llm.engine
        with self._lock:
            seq = engine.add_request(ids, params)
            try:
                while not seq.finished:
                    for out in engine.step():
                        if out.request_id != seq.request_id:
                            continue
                        text = splitter.feed(out.text, out.token_ids)
                        if out.finished:
                            rest, calls = splitter.finish()
                            reason = (
                                "tool_calls" if calls and out.finish_reason == "stop" else out.finish_reason
                            )
                            usage = Usage(len(ids), len(splitter.token_ids))
                            yield ChatChunk(text + rest, tuple(calls), reason or "stop", usage)
                        elif text:
                            yield ChatChunk(text)
            finally:
                if not seq.finished and seq.request_id in engine.requests:
                    engine.abort(seq.request_id)

    def _chat_many(
        self, requests: Sequence[ChatRequest | JambaStackError]
    ) -> list[ChatResponse | JambaStackError]:
        """One batch through the engine; a request whose prompt does not fit fails alone."""
        results: list[ChatResponse | JambaStackError] = list(requests)  # errors stay in place
        batch: list[tuple[int, list[int], SamplingParams, ToolCallSplitter]] = []
        for k, request in enumerate(requests):
            if isinstance(request, JambaStackError):
                continue
            try:
                ids, params = local_prompt(self.llm, request)
                if len(ids) >= self.llm.max_model_len:
                    raise ContextLengthError(
                        f"the prompt has {len(ids):,} tokens and the context is {self.llm.max_model_len:,}: "
                        "shorten it"
                    )
            except JambaStackError as exc:
                results[k] = exc
                continue
            batch.append((k, ids, params, splitter_for(self.llm, request)))
        if batch:
            with self._lock:
                outs = self.llm.generate([ids for _, ids, _, _ in batch], [p for _, _, p, _ in batch])
            for (k, ids, _, splitter), out in zip(batch, outs, strict=True):
                if out.finish_reason == "error":
                    results[k] = JambaStackError(f"the engine failed this request: {out.error}")
                    continue
                text = splitter.feed(out.text, out.token_ids)
                rest, calls = splitter.finish()
                results[k] = response_of(
                    text + rest, calls, out.finish_reason, Usage(len(ids), len(out.token_ids))
                )
        return results
