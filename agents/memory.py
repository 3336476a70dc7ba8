"""Conversation memory with a token budget, saved and resumed as JSON sessions.

An agent with `memory=ConversationMemory(...)` sends, each turn, its instructions, then as much of
the remembered conversation as fits the budget, then the current run's messages; after the run its
messages (goal, assistant turns, tool results) are added to the memory.

Truncation (not summarisation): the conversation is cut into units, a user message, or an
assistant message together with the tool results that answer it (a tool result without its call
would confuse the model). The oldest units are dropped until the rest fits `max_tokens`; the
current run's goal is never dropped, and the current run's own later units go only after all
remembered ones. Tokens are counted by `count_tokens` (default: about 4 characters a token, plus 4
per message: cheap, approximate; `Agent` passes the model's tokenizer when it is in-process).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jamba_stack.agents.errors import AgentConfigError

TokenCounter = Callable[[str], int]
SESSION_VERSION = 1


def approx_tokens(text: str) -> int:
    """About 4 characters a token (English text under BPE tokenizers)."""
    return (len(text) + 3) // 4


def message_tokens(message: Mapping[str, Any], count: TokenCounter) -> int:
    """Tokens one message costs: its text, its tool calls' JSON, and 4 for the role markers."""
    text = message.get("content") or ""
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False)
    calls = message.get("tool_calls")
    if calls:
        text += json.dumps(calls, ensure_ascii=False)
    return count(text) + 4


def units(messages: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Indices of `messages` grouped into droppable units: an assistant message with the tool
    results that follow it; any other message alone."""
    out: list[list[int]] = []
    for i, message in enumerate(messages):
        if message.get("role") == "tool" and out and messages[out[-1][0]].get("role") == "assistant":
            out[-1].append(i)
        else:
            out.append([i])
    return out


def fit_messages(
    messages: Sequence[Mapping[str, Any]], budget: int, count: TokenCounter, keep: int | None = None
) -> list[dict[str, Any]]:
    """The newest part of `messages` that fits `budget` tokens, dropping the oldest units first;
    the message at index `keep` (the goal) is never dropped. When nothing else fits, the goal and
    the newest unit are kept anyway (the model then refuses a too-long prompt with a typed error)."""
    groups = units(messages)
    costs = [sum(message_tokens(messages[i], count) for i in g) for g in groups]
    kept = [True] * len(groups)
    total = sum(costs)
    for gi, group in enumerate(groups[:-1]):
        if total <= budget:
            break
        if keep is not None and keep in group:
            continue
        kept[gi] = False
        total -= costs[gi]
    return [dict(messages[i]) for gi, g in enumerate(groups) if kept[gi] for i in g]


class ConversationMemory:
    """The messages of earlier runs, sent again (within `max_tokens`) on the next one.

    Args:
        max_tokens: budget for remembered plus current messages sent each turn (instructions not
            counted). count_tokens: a counter (default `approx_tokens`). session_id: a name for
            the saved session (default: random).
    """

    def __init__(
        self,
        max_tokens: int = 4096,
        count_tokens: TokenCounter | None = None,
        session_id: str | None = None,
        messages: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise AgentConfigError(f"max_tokens={max_tokens!r} is invalid: use an integer >= 1")
        self.max_tokens = max_tokens
        self.count_tokens: TokenCounter = count_tokens or approx_tokens
        self._custom_counter = count_tokens is not None
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.messages: list[dict[str, Any]] = [dict(m) for m in messages]

    def use_counter(self, count: TokenCounter) -> None:
        """Count with `count` unless a counter was given at construction (called by `Agent`)."""
        if not self._custom_counter:
            self.count_tokens = count

    def add(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Remember `messages` (no system messages: the agent's instructions are sent anyway)."""
        self.messages.extend(dict(m) for m in messages if m.get("role") != "system")

    def clear(self) -> None:
        self.messages.clear()

    def window(self, current: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """Remembered messages plus `current` (whose first message, the goal, is kept), cut to
        the budget as the module docstring says."""
        merged = [*self.messages, *current]
        keep = len(self.messages) if current else None
        return fit_messages(merged, self.max_tokens, self.count_tokens, keep)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SESSION_VERSION,
            "session_id": self.session_id,
            "max_tokens": self.max_tokens,
            "messages": self.messages,
        }

    def save(self, path: str | Path) -> Path:
        """Write the session as JSON (atomically: a crash leaves the old file); returns the path."""
        out = Path(path)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, path: str | Path, count_tokens: TokenCounter | None = None) -> ConversationMemory:
        """A session written by `save`. Raises `AgentConfigError` for a missing or malformed file."""
        p = Path(path)
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AgentConfigError(f"no session file at {p}: save one first with memory.save(path)") from None
        except json.JSONDecodeError as exc:
            raise AgentConfigError(f"session file {p} is not JSON ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise AgentConfigError(f"session file {p} has no 'messages' list: it was not written by save()")
        return cls(
            max_tokens=int(obj.get("max_tokens", 4096)),
            count_tokens=count_tokens,
            session_id=obj.get("session_id"),
            messages=obj["messages"],
        )
