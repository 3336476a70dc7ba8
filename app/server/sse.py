"""Server-sent events in OpenAI's framing: `data: {json}\\n\\n` per event, `data: [DONE]` last.

Only `data:` lines are sent (no comments or keep-alives): the `ai21` SDK refuses any other line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def event(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class SSEResponse(StreamingResponse):
    """A `text/event-stream` response that closes its generator when the response ends, however
    it ends. Starlette cancels the send loop when the client disconnects; if that happens while a
    chunk is being sent, the generator sits at a `yield` and would be closed only when collected.
    Closing it here aborts its sequences at once; `on_close` then runs (it aborts the choices
    whose streams were never read: a client gone before the first event)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Runs to the end without suspending (the generators' cleanups do not await), so
            # it completes even inside a cancelled scope.
            try:
                await self._events.aclose()  # type: ignore[attr-defined]
            finally:
                if self._on_close is not None:
                    self._on_close()
