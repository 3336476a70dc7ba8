"""Request streams: each request's outputs, handed from the engine thread to its asyncio consumer.

`RequestStream` is one request as both threads see it, and turns the engine's `StepOutput`s into
what its consumer reads. `Outbox` collects, on the engine thread, the items of a round (a step, or
a batch of commands) and gives each event loop its items in one `loop.call_soon_threadsafe` call,
not one per token. `AsyncLLM` drives both.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from jamba_runtime.engine.outputs import RequestOutputDelta, StepOutput, Usage
from jamba_runtime.errors import RequestFailedError


@dataclass(eq=False)
class RequestStream:
    """One request as both threads see it. `completion_tokens` is the engine thread's alone;
    `finished` is set by the engine thread once the request's last item (or error) is queued;
    `cancelled` by whichever thread sees the consumer leave."""

    request_id: str
    prompt_token_ids: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutputDelta | BaseException]
    completion_tokens: int = 0
    finished: bool = False
    cancelled: bool = False  # its consumer left (set by any thread; read by the engine thread)
    finalizer: weakref.finalize | None = None

    def usage(self) -> Usage:
        return Usage(len(self.prompt_token_ids), self.completion_tokens)

    def item(self, out: StepOutput) -> RequestOutputDelta | RequestFailedError:
        """What the consumer reads for the engine's `out` (its tokens counted): a delta, or a
        `RequestFailedError` when the request alone failed in the engine."""
        if out.finish_reason == "error":
            return RequestFailedError(f"request {out.request_id!r} failed in the engine: {out.error}")
        self.completion_tokens += len(out.token_ids)
        usage = self.usage() if out.finished else None
        return RequestOutputDelta(
            out.request_id, out.text, out.token_ids, out.finished, out.finish_reason, usage, out.logprobs
        )

    def aborted(self) -> RequestOutputDelta:
        """The last item of an aborted request."""
        return RequestOutputDelta(self.request_id, "", [], True, "abort", self.usage())


class Outbox:
    """Items for the streams' queues, kept per event loop until `hand_out` (engine thread only)."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}

    def put(self, stream: RequestStream, item: RequestOutputDelta | BaseException) -> None:
        self._items.setdefault(stream.loop, []).append((stream.queue, item))

    def hand_out(self) -> list[asyncio.AbstractEventLoop]:
        """Give each event loop its items in one call. Returns the loops that are closed: their
        items are dropped, nobody can read them."""
        items, self._items = self._items, {}
        closed = []
        for loop, batch in items.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:
                closed.append(loop)
        return closed


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)
