"""`AsyncLocalChatModel`: a `ChatModel` over `jamba_runtime.AsyncLLM`, whose `achat` is native
asyncio, so concurrent agents' turns run as one continuous batch in the engine.

`LocalChatModel` serves one request at a time (a lock, `achat` in a worker thread); its
`concurrent()` lends the engine to this adapter for the length of a block (the agents' scheduler
uses it). It renders, constrains and parses exactly as `LocalChatModel` does (`local_prompt`).

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
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from typing_extensions import Unpack

from jamba_runtime.async_llm import AsyncLLM
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.llm import LLM
from jamba_stack.chat.local import LocalChatModel, local_prompt, splitter_for
from jamba_stack.chat.model import (
    ChatChunk,
    ChatModel,
    ChatOptions,
    ChatRequest,
    ChatResponse,
    ModelInfo,
    Usage,
)


class AsyncLocalChatModel(ChatModel):
    """Chat with an in-process model through `AsyncLLM`: many concurrent `achat` calls (from one
    or several event loops) batch in the engine.

    Make it with `LocalChatModel.concurrent()` (or `AsyncLocalChatModel.from_llm(llm)`); while it
    is open the `LLM`'s engine belongs to it: do not use the `LLM` otherwise until `close()`.
    `chat` / `stream` (sync) work from threads without a running event loop.
    """

    def __init__(self, engine: AsyncLLM, reuse_prefix: bool = True) -> None:
        self.engine = engine
        self.llm: LLM = engine.llm
        self.reuse_prefix = reuse_prefix
        self.prefix_requests = 0  # requests started from a snapshot of an earlier prompt
        # Every key this adapter saves starts with it, so `close` can find them in the engine.
        self.snapshot_prefix = f"agent-ctx-{uuid.uuid4().hex[:12]}-"
        self._prefixes: dict[str, list[int]] = {}  # snapshot key -> its prompt ids
        self._pending: set[str] = set()  # keys that a request in flight will save under

    @classmethod
    def from_llm(cls, llm: LLM, reuse_prefix: bool = True) -> AsyncLocalChatModel:
        return cls(AsyncLLM.from_llm(llm), reuse_prefix)

    def count_tokens(self, text: str) -> int:
        return LocalChatModel(self.llm).count_tokens(text)

    def _count_prompt(self, request: ChatRequest) -> int:
        return len(request.inputs.render(self.llm.tokenizer))

    @property
    def context_length(self) -> int:
        return self.llm.max_model_len

    @property
    def max_concurrency(self) -> int:
        return max(1, self.llm.engine.config.max_num_seqs)

    def info(self) -> ModelInfo:
        return ModelInfo(mode="in-process", name="local", context_length=self.llm.max_model_len)

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
