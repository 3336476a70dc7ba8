"""Structured events of an agent run, one per step, with JSON export.

Event types (`TraceEvent.type`) and what their `data` holds:

- `llm`: one model turn. `messages` (how many were sent), `prompt_tokens`, `completion_tokens`,
  `latency_ms`, `queued_ms` (waiting for a scheduler slot, when scheduled), `finish_reason`,
  `content`, `tool_calls` ([{"id", "name", "arguments"}]), `purpose` ("turn" or "output" for the
  structured final answer of an agent with `output_type`).
- `tool_call`: a call the model made: `call_id`, `name`, `arguments`.
- `tool_result`: what went back to the model: `call_id`, `name`, `content` (the tool message's
  text), `error` (None, or {"type", "message"} when the tool raised or its arguments were bad),
  `latency_ms`.
- `denied`: a call the policy refused (it never ran): `call_id`, `name`, `arguments`, `reason`.
  The model is told, as a tool result with an error, so a `tool_result` follows.
- `final`: the end of the run: `output` (JSON form), `stop_reason` ("final", "max_steps",
  "max_tokens", "timeout"), `steps`, `tool_calls`, `prompt_tokens`, `completion_tokens`,
  `elapsed_ms`.

Every event also has `agent` (the agent's name), `step` (the model turn it belongs to, from 0)
and `t` (seconds since the run started).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic_core

if TYPE_CHECKING:
    from jamba_stack.agents.run import RunResult

EventType = Literal["llm", "tool_call", "tool_result", "denied", "final"]
EVENT_TYPES: tuple[str, ...] = ("llm", "tool_call", "tool_result", "denied", "final")


@dataclass(frozen=True)
class TraceEvent:
    """One step event; `data` holds the type's fields (see the module docstring), also readable
    as `event["name"]`. A `final` event carries the run's `result` (not exported)."""

    type: EventType
    agent: str
    step: int
    t: float
    data: Mapping[str, Any]
    result: RunResult | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_json(self) -> dict[str, Any]:
        """The event as plain JSON types: {"type", "agent", "step", "t", **data}."""
        body = {"type": self.type, "agent": self.agent, "step": self.step, "t": round(self.t, 6)}
        return {**body, **jsonable(dict(self.data))}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TraceEvent:
        """The event back from `to_json` (the `result` of a final event is not kept)."""
        data = {k: v for k, v in obj.items() if k not in ("type", "agent", "step", "t")}
        return cls(obj["type"], obj["agent"], int(obj["step"]), float(obj["t"]), data)


def jsonable(value: Any) -> Any:
    """`value` in plain JSON types (pydantic models, dataclasses; other objects as `str`)."""
    return json.loads(pydantic_core.to_json(value, fallback=str))


def trace_to_json(events: Iterable[TraceEvent], indent: int | None = None) -> str:
    """A list of events as a JSON array."""
    return json.dumps([e.to_json() for e in events], indent=indent, ensure_ascii=False)


def save_trace(events: Iterable[TraceEvent], path: str | Path) -> Path:
    """Write the events as a JSON array to `path`; returns it."""
    out = Path(path)
    out.write_text(trace_to_json(events, indent=1), encoding="utf-8")
    return out


def load_trace(path: str | Path) -> list[TraceEvent]:
    """Events written by `save_trace` (or `RunResult.trace_json`)."""
    return [TraceEvent.from_json(o) for o in json.loads(Path(path).read_text(encoding="utf-8"))]
