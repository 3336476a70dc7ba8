"""What an agent may do: which tools, with which arguments, after whose confirmation, for how
long. A `Policy` is Python data set by whoever builds the agent: nothing the model writes, and
nothing in a document or a tool result, can change it (text never grants a permission).

Rules for a tool call, in order; the first that refuses denies the call, which never runs, is
recorded as a `denied` event and goes back to the model as a tool error:

1. the agent has a tool of that name (unconstrained models can name others);
2. `allowed_tools` (when set) names it;
3. the arguments fit the tool's parameters (else an `invalid_arguments` error, not a denial);
4. every validator for the tool (`validators[name]`, then `validators["*"]`) accepts them;
5. a side-effecting tool (`@tool(side_effects=True)`) is confirmed by `confirm(call)`; without a
   `confirm` hook it runs only when `allowed_tools` names it explicitly.

Limits: `max_steps` model turns (the run stops with `stop_reason="max_steps"`), `max_tokens`
prompt plus completion tokens over all turns ("max_tokens"), `max_seconds` wall time
("timeout"), and `max_tool_calls`: calls past it are denied, and later turns offer no tools, so the
model has to answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jamba_stack.agents.errors import AgentConfigError
from jamba_stack.agents.tool import Tool
from jamba_stack.chat.tool_calls import ToolCall

Validator = Callable[[dict[str, Any]], "str | bool | None"]
"""Takes the validated arguments; returns None or True to accept, False or a reason to refuse (or
raises: its message is the reason)."""
ConfirmHook = Callable[[ToolCall], "bool | Awaitable[bool]"]


@dataclass(frozen=True)
class Policy:
    """Permissions and limits of one agent (see the module docstring for the rules).

    Args:
        allowed_tools: names of the tools the agent may call; None: all of its tools (side-effecting
            ones still need `confirm`). Only these are offered to the model.
        validators: {tool name or "*": a validator or a list of them}.
        confirm: asked before each call of a side-effecting tool; sync or async; True runs it.
        max_steps: model turns per run (>= 1). max_tokens: total tokens per run.
        max_seconds: wall time per run. max_tool_calls: tool calls per run.
    """

    allowed_tools: Sequence[str] | None = None
    validators: Mapping[str, Validator | Sequence[Validator]] = field(default_factory=dict)
    confirm: ConfirmHook | None = None
    max_steps: int = 10
    max_tokens: int | None = None
    max_seconds: float | None = None
    max_tool_calls: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.allowed_tools, str):
            raise AgentConfigError(
                f"allowed_tools={self.allowed_tools!r} is a string: pass a list of tool names"
            )
        if self.allowed_tools is not None:
            object.__setattr__(self, "allowed_tools", tuple(self.allowed_tools))
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise AgentConfigError(f"max_steps={self.max_steps!r} is invalid: use an integer >= 1")
        for name in ("max_tokens", "max_tool_calls"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise AgentConfigError(f"{name}={value!r} is invalid: use an integer >= 0, or None")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise AgentConfigError(f"max_seconds={self.max_seconds!r} is invalid: use a number > 0, or None")

    def check_tools(self, tools: Sequence[Tool]) -> None:
        """Raise `AgentConfigError` when the policy names a tool the agent does not have (a typo
        would otherwise silently deny every call of the tool meant)."""
        names = {t.name for t in tools}
        unknown = [n for n in (self.allowed_tools or ()) if n not in names]
        unknown += [n for n in self.validators if n != "*" and n not in names]
        if unknown:
            raise AgentConfigError(
                f"the policy names tools the agent does not have: {sorted(set(unknown))}; "
                f"its tools are {sorted(names)}"
            )

    def offered(self, tools: Sequence[Tool]) -> list[Tool]:
        """The tools shown to the model: the allowed ones."""
        if self.allowed_tools is None:
            return list(tools)
        return [t for t in tools if t.name in self.allowed_tools]

    def precheck(self, tool: Tool | None, call: ToolCall) -> str | None:
        """Rules 1-2: the reason to deny `call` before its arguments are looked at, or None."""
        if tool is None:
            return f"there is no tool named {call.name!r}"
        if self.allowed_tools is not None and tool.name not in self.allowed_tools:
            return f"tool {tool.name!r} is not allowed by this agent's policy"
        return None

    async def authorize(self, tool: Tool, call: ToolCall, arguments: dict[str, Any]) -> str | None:
        """Rules 4-5 on validated `arguments`: the reason to deny, or None to run the call."""
        for validator in self._validators(tool.name):
            try:
                verdict = validator(arguments)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception as exc:
                return f"argument check failed: {exc}"
            if verdict is False:
                return f"the arguments of {tool.name!r} were refused by a validator"
            if isinstance(verdict, str):
                return verdict
        if tool.side_effects:
            if self.confirm is None:
                if self.allowed_tools is None or tool.name not in self.allowed_tools:
                    return f"tool {tool.name!r} has side effects and needs confirmation; none was given"
                return None
            verdict = self.confirm(call)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict is not True:
                return f"the call of {tool.name!r} was not confirmed"
        return None

    def _validators(self, name: str) -> list[Validator]:
        out: list[Validator] = []
        for key in (name, "*"):
            found = self.validators.get(key)
            if found is None:
                continue
            out.extend([found] if callable(found) else list(found))
        return out
