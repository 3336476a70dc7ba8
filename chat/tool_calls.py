"""Tool calls coming back from the model: `ToolCall`, the parsed calls of a finished output
(`tool_calls_of`, through the runtime's `parse_tool_calls`), and `ToolCallSplitter`, one choice's
stream split into content (streamed as it comes) and the `<tool_calls>[...]</tool_calls>` block
(parsed at the end). Shared by in-process chat and the HTTP API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jamba_runtime import Tokenizer, parse_tool_calls
from jamba_runtime.structured.tools import TOOL_CALLS_START


@dataclass(frozen=True)
class ToolCall:
    """One function call the model made. `arguments` is the parsed JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """The call as OpenAI writes it in an assistant message (arguments as a JSON string)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_calls_of(text: str, tool_names: set[str]) -> list[ToolCall]:
    """The calls in the `<tool_calls>` block of `text` (the runtime's `parse_tool_calls`), with
    fresh ids. Raises `ValueError` when a call names an unknown tool or the block is not whole
    (possible only without constrained decoding, or when `max_tokens` cut the block)."""
    _, raw = parse_tool_calls(text)
    calls = []
    for item in raw:
        if item["name"] not in tool_names or not isinstance(item["arguments"], dict):
            raise ValueError(f"not a call to a known tool with object arguments: {item!r}")
        calls.append(ToolCall(new_tool_call_id(), item["name"], item["arguments"]))
    return calls


class ToolCallSplitter:
    """Splits one choice's output into content and tool calls while it streams.

    `feed` each engine delta and send on the content it returns: text before the tool-call block
    streams as it comes, the block is held back. `finish` parses the block; when it does not parse
    (cut by `max_tokens`, or unconstrained output) its text is returned as content instead, so
    nothing the model wrote is lost.

    The block starts at the `<tool_calls>` special token. With constrained tools the engine keeps
    special tokens in the text, so the tag arrives as text; without, it is decoded away and only
    its id shows. Both are handled; a tag that arrives as plain text split over deltas too.
    """

    def __init__(self, tokenizer: Tokenizer, tools: Sequence[Mapping[str, Any]] | None) -> None:
        self._tokenizer = tokenizer
        self._names = {t["function"]["name"] for t in tools or ()}
        self._active = bool(self._names)
        self._start_id = tokenizer.token_to_id(TOOL_CALLS_START)
        self._eos = set(tokenizer.eos_token_ids)
        self.token_ids: list[int] = []
        self._held: list[str] = []
        self._pending = ""  # a tail that may be the start of the tag
        self._in_block = False

    def feed(self, text: str, token_ids: Sequence[int]) -> str:
        """Take one delta; return the content to send now."""
        self.token_ids.extend(token_ids)
        if not self._active:
            return text
        if self._in_block:
            self._held.append(text)
            return ""
        text, self._pending = self._pending + text, ""
        at = text.find(TOOL_CALLS_START)
        if at >= 0:
            self._in_block = True
            self._held.append(text[at:])
            return text[:at]
        if self._start_id is not None and self._start_id in token_ids:
            self._in_block = True  # the tag was decoded away: all of `text` precedes it
            return text
        keep = _partial_tag(text)
        if keep:
            self._pending = text[-keep:]
            return text[:-keep]
        return text

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end: (content still to send, the tool calls)."""
        if not self._in_block:
            rest, self._pending = self._pending, ""
            return rest, []
        ids = list(self.token_ids)
        while ids and ids[-1] in self._eos:
            ids.pop()
        raw = self._tokenizer.decode(ids, skip_special_tokens=False)
        try:
            calls = tool_calls_of(raw, self._names)
        except (ValueError, TypeError, KeyError, AttributeError):
            calls = []
        return ("" if calls else "".join(self._held)), calls


def _partial_tag(text: str) -> int:
    """Length of the longest end of `text` that is a proper start of the tool-call tag."""
    for n in range(min(len(text), len(TOOL_CALLS_START) - 1), 0, -1):
        if TOOL_CALLS_START.startswith(text[-n:]):
            return n
    return 0
