"""The chat seam over an in-process model: `LocalChatModel` over an `LLM`, and the asyncio
adapter `AsyncLocalChatModel` over `AsyncLLM` that its `concurrent()` lends the engine to.

`LocalChatModel` runs one request at a time (a lock): a stream holds the engine until it is read
to the end or closed. `chat_many` runs its requests as one batch in the engine. For many
concurrent users, run the server.

`AsyncLocalChatModel`'s `achat` is native asyncio, so concurrent agents' turns run as one
continuous batch in the engine. It renders, constrains and parses exactly as `LocalChatModel`
does (`local_prompt`).

Prefix reuse (`reuse_prefix=True`): an agent's next turn re-sends its whole conversation, whose
prompt begins with the previous turn's prompt. Each request saves a runtime snapshot at the end of
its prompt (KV blocks shared, Mamba state copied: `LLMEngine` snapshots), and a later prompt that
extends a saved one starts from it, so only the new messages are prefilled instead of re-reading
the conversation. The turn that extends a snapshot saves under the same key, replacing it: a
conversation holds one snapshot however many turns it has (a second turn extending the same prompt
while the first is in flight, a fork, gets a key of its own). Snapshots live in the engine's
`num_snapshot_slots` (oldest dropped first; give the engine about one slot per concurrent agent); a
prompt that extends none is prefilled whole. `close()` drops every snapshot this adapter saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from typing_extensions import Unpack

from jamba_runtime import LLM, AsyncLLM, SamplingParams
from jamba_runtime.errors import ContextLengthError, InvalidRequestError, JambaStackError, RequestFailedError
from jamba_stack.chat.model import (
    ChatChunk,
    ChatModel,
    ChatOptions,
    ChatRequest,
    ChatResponse,
    ModelInfo,
    Usage,
    response_of,
)
from jamba_stack.chat.tool_calls import ToolCallSplitter


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
        with self._lock:
            adapter = AsyncLocalChatModel(AsyncLLM.from_llm(self.llm), reuse_prefix, self.name)
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
                    results[k] = RequestFailedError(f"the engine failed this request: {out.error}")
                    continue
                text = splitter.feed(out.text, out.token_ids)
                rest, calls = splitter.finish()
                results[k] = response_of(
                    text + rest, calls, out.finish_reason, Usage(len(ids), len(out.token_ids))
                )
        return results


class AsyncLocalChatModel(LocalChatModel):
    """Chat with an in-process model through `AsyncLLM`: many concurrent `achat` calls (from one
    or several event loops) batch in the engine. Counting, context length and info are
    `LocalChatModel`'s.

    Make it with `LocalChatModel.concurrent()` (or `AsyncLocalChatModel.from_llm(llm)`); while it
    is open the `LLM`'s engine belongs to it: do not use the `LLM` otherwise until `close()`.
    `chat` / `stream` (sync) work from threads without a running event loop.
    """

    def __init__(self, engine: AsyncLLM, reuse_prefix: bool = True, name: str | None = None) -> None:
        super().__init__(engine.llm, name)
        self.engine = engine
        self.reuse_prefix = reuse_prefix
        self.prefix_requests = 0  # requests started from a snapshot of an earlier prompt
        # Every key this adapter saves starts with it, so `close` can find them in the engine.
        self.snapshot_prefix = f"agent-ctx-{uuid.uuid4().hex[:12]}-"
        self._prefixes: dict[str, list[int]] = {}  # snapshot key -> its prompt ids
        self._pending: set[str] = set()  # keys that a request in flight will save under

    @classmethod
    def from_llm(cls, llm: LLM, reuse_prefix: bool = True) -> AsyncLocalChatModel:
        return cls(AsyncLLM.from_llm(llm), reuse_prefix)

    @contextlib.contextmanager
    def concurrent(self, reuse_prefix: bool = True) -> Iterator[ChatModel]:
        yield self  # already concurrent

    def _chat_many(
        self, requests: Sequence[ChatRequest | JambaStackError]
    ) -> list[ChatResponse | JambaStackError]:
        # Not `LocalChatModel`'s batch through `LLM.generate`: the engine is the loop thread's now.
        return ChatModel._chat_many(self, requests)

    def close(self) -> None:
        """Stop the engine loop (requests still running end as aborted) and drop the snapshots
        this adapter saved; the `LLM` is free again. Idempotent."""
        self.engine.shutdown()
        # Only this adapter knows these keys: left in the engine they would hold state slots and
        # KV blocks for good, and crowd out the batch of whoever uses the engine next. The loop has
        # stopped, so this thread may touch the engine.
        engine = self.llm.engine
        for key in [k for k in engine.snapshots if k.startswith(self.snapshot_prefix)]:
            engine.drop_snapshot(key)
        self._prefixes.clear()

    async def achat(
        self, messages: Sequence[Mapping[str, Any]], **options: Unpack[ChatOptions]
    ) -> ChatResponse:
        """One assistant turn, generated in the engine's shared batch. Cancelling the awaiting
        task aborts the request (its cache is freed)."""
        return await self._achat(ChatRequest.make(messages, options))

    async def _achat(self, request: ChatRequest) -> ChatResponse:
        ids, params = local_prompt(self.llm, request)
        splitter = splitter_for(self.llm, request)
        text: list[str] = []
        finish_reason: str | None = None
        prefix, save = self._snapshot_keys(ids)
        try:
            async with contextlib.aclosing(
                self.engine.add_request(ids, params, prefix_snapshot=prefix, save_snapshot=save)
            ) as deltas:
                async for delta in deltas:
                    text.append(splitter.feed(delta.text, delta.token_ids))
                    finish_reason = delta.finish_reason or finish_reason
        except InvalidRequestError:
            if prefix is None or text:
                raise
            # The snapshot was dropped between our check and the engine taking the request.
            self._prefixes.pop(prefix, None)
            return await self._achat(request)
        finally:
            if save is not None:
                self._pending.discard(save)  # saved by now, or never will be
        rest, calls = splitter.finish()
        content = "".join(text) + rest
        reason = finish_reason or "stop"
        if calls and reason == "stop":
            reason = "tool_calls"
        usage = Usage(len(ids), len(splitter.token_ids))
        return ChatResponse((content or None) if calls else content, tuple(calls), reason, usage)

    def _snapshot_keys(self, ids: list[int]) -> tuple[str | None, str | None]:
        """(the saved prompt this one extends, longest first; the key to save this one under)."""
        if not self.reuse_prefix:
            return None, None
        snapshots = self.llm.engine.snapshots  # read from this thread: membership tests only
        best: str | None = None
        for key, prefix_ids in list(self._prefixes.items()):
            if key not in snapshots:
                if key not in self._pending:  # dropped by the engine, or never saved
                    del self._prefixes[key]
            elif len(prefix_ids) < len(ids) and ids[: len(prefix_ids)] == prefix_ids:
                if best is None or len(prefix_ids) > len(self._prefixes[best]):
                    best = key
        if best is not None:
            self.prefix_requests += 1
        # Continuing a conversation replaces its snapshot (same key): one per conversation, not one
        # per turn, which would fill the engine's slots with prompts no later turn extends. The
        # engine restores when it takes the request and saves at the end of its prompt, so one
        # request may read and then replace a key; and it checks the tokens of what it restores.
        save = best if best is not None and best not in self._pending else self._new_key()
        self._pending.add(save)
        self._prefixes[save] = list(ids)
        return best, save

    def _new_key(self) -> str:
        return f"{self.snapshot_prefix}{uuid.uuid4().hex[:16]}"

    def _chat(self, request: ChatRequest) -> ChatResponse:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._achat(request))
        raise InvalidRequestError(
            "AsyncLocalChatModel.chat() was called inside an event loop: use `await model.achat(...)`"
        )

    def _stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        # Whole-turn granularity: agents do not stream tokens; `chat` semantics in one chunk.
        reply = self._chat(request)
        yield ChatChunk(reply.content or "", reply.tool_calls, reply.finish_reason, reply.usage)
