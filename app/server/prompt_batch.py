"""Prompt texts of concurrent requests, tokenized together.

`tokenizers` holds the GIL while it encodes one text, so requests that arrive together and each
tokenize on a worker thread wait for one another: on an H100 host, preparing a request (checks,
template, tokenizing) took 6 ms at concurrency 1 and 168 ms a request when 64 arrived at once
(bench/NOTES.md). `PromptBatcher` hands every text that arrives while a batch is being tokenized
to the next batch: one `Tokenizer.encode_batch` call, whose threads share the work outside the
GIL. A lone request waits for nobody: its batch starts at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jamba_runtime.engine.engine import LLMEngine

_Item = tuple[str, bool, "asyncio.Future[list[int]]"]  # text, checked as a prompt, its result


class PromptBatcher:
    """Tokenizes the prompts of concurrent requests in batches (on the event loop's thread pool).

    Example:
        >>> prompts = PromptBatcher(llm.engine)
        >>> ids = await prompts.prompt_ids("Once upon a time")  # raises as engine.prompt_ids
        >>> ids = await prompts.template_ids(rendered_chat)  # no special tokens, no length check
    """

    def __init__(self, engine: LLMEngine, max_batch: int = 256) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._pending: list[_Item] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def prompt_ids(self, text: str) -> list[int]:
        """`engine.prompt_ids(text)` (special tokens added, the context checked); raises as it does."""
        return await self._submit(text, True)

    async def template_ids(self, text: str) -> list[int]:
        """The ids of a rendered chat template: `encode(text, add_special_tokens=False)`, unchecked."""
        return await self._submit(text, False)

    async def _submit(self, text: str, checked: bool) -> list[int]:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((text, checked, result))
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain())
        return await result

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await asyncio.to_thread(self._encode, [(t, c) for t, c, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                    results = [exc] * len(batch)
                for (_, _, result), r in zip(batch, results, strict=True):
                    if result.done():  # its request was cancelled (the client left)
                        continue
                    if isinstance(r, BaseException):
                        result.set_exception(r)
                    else:
                        result.set_result(r)
        finally:
            self._drain_task = None

    def _encode(self, items: list[tuple[str, bool]]) -> list[list[int] | Exception]:
        """On a worker thread: each item's ids, or the error its request gets."""
        engine = self._engine
        out: list[list[int] | Exception] = [[] for _ in items]
        for checked in (True, False):
            rows = [i for i, (text, c) in enumerate(items) if c == checked and (text or not checked)]
            if not rows:
                continue
            limit = engine.max_model_len if checked else None
            encoded = engine.prompt_encoder.encode_many([items[i][0] for i in rows], limit, checked)
            for i, ids in zip(rows, encoded, strict=True):
                out[i] = ids if isinstance(ids, Exception) or not checked else _checked(engine, ids)
        for i, (text, checked) in enumerate(items):
            if checked and not text:
                out[i] = _checked(engine, text)  # the empty prompt's own error
        return out


def _checked(engine: LLMEngine, prompt: str | list[int]) -> list[int] | Exception:
    try:
        return engine.prompt_ids(prompt)
    except Exception as exc:  # noqa: BLE001 - handed to the request, raised in its handler
        return exc
