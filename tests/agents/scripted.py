"""A scripted `ChatModel`: a real `ChatModel` subclass whose turns are written by the test (a test
double of the LLM, not of the code under test). It records every request it gets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jamba_stack.chat import ChatChunk, ChatModel, ChatResponse, Usage
from jamba_stack.chat.tool_calls import ToolCall, new_tool_call_id

Turn = str | list[tuple[str, dict[str, Any]]] | Callable[[Any], ChatResponse]


def calls(*pairs: tuple[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return list(pairs)


class ScriptedModel(ChatModel):
    """Replies with `script`, one item per turn: a string (a final answer), a list of
    (tool name, arguments) (tool calls), or a function of the request. `delay`: seconds each turn
    takes. Raises `AssertionError` when the script runs out."""

    def __init__(self, script: Sequence[Turn], delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.requests: list[Any] = []
        self._lock = threading.Lock()

    def _chat(self, request: Any) -> ChatResponse:
        with self._lock:
            self.requests.append(request)
            assert self.script, f"the script ran out at turn {len(self.requests)}"
            turn = self.script.pop(0)
        if self.delay:
            time.sleep(self.delay)
        if callable(turn):
            return turn(request)
        usage = Usage(10 * len(request.inputs.messages), 5)
        if isinstance(turn, str):
            return ChatResponse(turn, (), "stop", usage)
        made = tuple(ToolCall(new_tool_call_id(), name, args) for name, args in turn)
        return ChatResponse(None, made, "tool_calls", usage)

    def _stream(self, request: Any) -> Iterator[ChatChunk]:
        reply = self._chat(request)
        yield ChatChunk(reply.content or "", reply.tool_calls, reply.finish_reason, reply.usage)

    def messages(self, turn: int) -> list[dict[str, Any]]:
        """The messages sent on `turn` (from 0)."""
        return [dict(m) for m in self.requests[turn].inputs.messages]

    def tool_names(self, turn: int) -> list[str]:
        return [t["function"]["name"] for t in self.requests[turn].inputs.tools or ()]
