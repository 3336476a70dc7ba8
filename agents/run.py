"""The agent loop. Each turn: chat with the offered tools -> the model's tool calls -> policy ->
run the allowed ones (concurrently) -> feed the results back as `tool` messages -> next turn;
until the model answers without calling a tool, or a limit (steps, tokens, wall time) ends it.

A tool that raises, or gets bad arguments, or is denied, answers with a JSON error the model can
act on: `{"error": {"type": ..., "message": ...}}`; the run goes on. Errors of the model itself
(a too-long prompt, an unreachable server) end the run by raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from jamba_stack.agents.errors import OutputParseError, ToolArgumentsError, ToolError
from jamba_stack.agents.tool import Tool, clean_schema, to_content
from jamba_stack.agents.tracing import TraceEvent, jsonable, trace_to_json
from jamba_stack.chat import ChatModel, ChatResponse
from jamba_stack.chat.tool_calls import ToolCall

if TYPE_CHECKING:
    from jamba_stack.agents.agent import Agent

Gate = Callable[[str], contextlib.AbstractAsyncContextManager[float]]
"""A scheduler's admission: `async with gate(agent_name) as queued_seconds:` around a model call."""

OUTPUT_NUDGE = "Now write the final answer as JSON that follows the schema."


@dataclass
class RunResult:
    """What `Agent.run` returns.

    Attributes:
        final_output: the answer (text, or an instance of the agent's `output_type`); None when a
            limit stopped the run first.
        stop_reason: "final", "max_steps", "max_tokens" or "timeout".
        trace: the step events (`jamba_stack.agents.tracing`). messages: the conversation sent on the last
            turn plus the model's last reply (instructions first).
        steps: model turns. tool_calls: calls the model made (denied ones included).
    """

    agent: str
    final_output: Any
    stop_reason: str
    trace: list[TraceEvent]
    messages: list[dict[str, Any]]
    steps: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def trace_json(self, indent: int | None = None) -> str:
        """The trace as a JSON array of events, each with its `type`."""
        return trace_to_json(self.trace, indent=indent)

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "final_output": jsonable(self.final_output),
            "stop_reason": self.stop_reason,
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "elapsed_s": round(self.elapsed_s, 6),
            "trace": [e.to_json() for e in self.trace],
        }


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class AgentRun:
    """One run of an agent on a goal; `events()` drives it. Made by `Agent.astream` / `arun` and
    by `AgentScheduler` (which passes its `model` adapter and `gate`)."""

    agent: Agent
    goal: str
    model: ChatModel
    gate: Gate | None = None
    result: RunResult | None = None
    _trace: list[TraceEvent] = field(default_factory=list)
    _start: float = field(default_factory=time.monotonic)
    _step: int = 0
    _calls: int = 0
    _prompt_tokens: int = 0
    _completion_tokens: int = 0

    # ---- driving -----------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[TraceEvent]:
        """The run's events as they happen; the last is `final` (with `.result`)."""
        agent, policy = self.agent, self.agent.policy
        self._start = time.monotonic()
        system = [{"role": "system", "content": agent.instructions}] if agent.instructions else []
        run_messages: list[dict[str, Any]] = [{"role": "user", "content": self.goal}]
        output: Any = None
        reason = "final"
        try:
            while True:
                if self._step >= policy.max_steps:
                    raise _Stop("max_steps")
                self._check_tokens()
                sent = system + self._window(run_messages)
                reply = await self._turn(sent, self._options())
                yield self._llm_event(reply, len(sent), "turn")
                run_messages.append(reply.to_message())
                if not reply.tool_calls:
                    output = reply.content or ""
                    if agent.output_type is not None:
                        output, event = await self._structured_output(output, system, run_messages)
                        if event is not None:
                            yield event
                    break
                async for event in self._run_calls(reply.tool_calls, run_messages):
                    yield event
        except _Stop as stop:
            reason = stop.reason
        except TimeoutError:
            reason = "timeout"
        _answer_unanswered(run_messages, reason)
        conversation = system + self._window(run_messages)
        if agent.memory is not None:
            agent.memory.add(run_messages)
        elapsed = time.monotonic() - self._start
        self.result = RunResult(
            agent=agent.name,
            final_output=output if reason == "final" else None,
            stop_reason=reason,
            trace=self._trace,
            messages=conversation,
            steps=self._step,
            tool_calls=self._calls,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            elapsed_s=elapsed,
        )
        final = self._event(
            "final",
            {
                "output": jsonable(self.result.final_output),
                "stop_reason": reason,
                "steps": self._step,
                "tool_calls": self._calls,
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "elapsed_ms": round(elapsed * 1000, 3),
            },
        )
        final = TraceEvent(final.type, final.agent, final.step, final.t, final.data, self.result)
        self._trace[-1] = final
        yield final

    async def run(self) -> RunResult:
        async for _ in self.events():
            pass
        assert self.result is not None, "events() ends with the result set"
        return self.result

    # ---- model turns -------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        agent, policy = self.agent, self.agent.policy
        options: dict[str, Any] = dict(agent.model_options)
        offered = policy.offered(agent.tools)
        no_more_calls = policy.max_tool_calls is not None and self._calls >= policy.max_tool_calls
        choice = agent.tool_choice(self._step) if callable(agent.tool_choice) else agent.tool_choice
        if offered and not no_more_calls and choice != "none":
            options["tools"] = [t.definition() for t in offered]
            options["tool_choice"] = choice
        return self._cap_tokens(options)

    def _cap_tokens(self, options: dict[str, Any]) -> dict[str, Any]:
        budget = self.agent.policy.max_tokens
        if budget is not None:
            left = budget - self._prompt_tokens - self._completion_tokens
            options["max_tokens"] = max(1, min(options.get("max_tokens", 512), left))
        return options

    def _check_tokens(self) -> None:
        budget = self.agent.policy.max_tokens
        if budget is not None and self._prompt_tokens + self._completion_tokens >= budget:
            raise _Stop("max_tokens")

    def _window(self, run_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        memory = self.agent.memory
        return memory.window(run_messages) if memory is not None else list(run_messages)

    async def _turn(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> ChatResponse:
        self._queued = 0.0
        if self.gate is None:
            self._t0 = time.monotonic()
            reply = await self._bounded(self.model.achat(messages, **options))
        else:
            async with self.gate(self.agent.name) as queued:
                self._queued = queued
                self._t0 = time.monotonic()
                reply = await self._bounded(self.model.achat(messages, **options))
        self._step += 1
        self._prompt_tokens += reply.usage.prompt_tokens
        self._completion_tokens += reply.usage.completion_tokens
        return reply

    async def _bounded(self, awaitable: Any) -> Any:
        """Await within what is left of `max_seconds` (raises `TimeoutError` past it)."""
        limit = self.agent.policy.max_seconds
        if limit is None:
            return await awaitable
        left = limit - (time.monotonic() - self._start)
        if left <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise TimeoutError
        return await asyncio.wait_for(awaitable, left)

    def _llm_event(self, reply: ChatResponse, n_messages: int, purpose: str) -> TraceEvent:
        data = {
            "purpose": purpose,
            "messages": n_messages,
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "latency_ms": round((time.monotonic() - self._t0) * 1000, 3),
            "finish_reason": reply.finish_reason,
            "content": reply.content,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
        }
        if self.gate is not None:
            data["queued_ms"] = round(self._queued * 1000, 3)
        return self._event("llm", data, step=self._step - 1)

    async def _structured_output(
        self, text: str, system: list[dict[str, Any]], run_messages: list[dict[str, Any]]
    ) -> tuple[Any, TraceEvent | None]:
        """The final answer as the agent's `output_type`: the text itself when it already parses,
        else one more turn constrained by the type's JSON Schema (and that turn's `llm` event)."""
        output_type = self.agent.output_type
        assert output_type is not None
        with contextlib.suppress(pydantic.ValidationError, ValueError):
            return output_type.model_validate_json(text), None
        run_messages.append({"role": "user", "content": OUTPUT_NUDGE})
        options = {
            k: v
            for k, v in self.agent.model_options.items()
            if k not in ("tools", "tool_choice", "json_mode")
        }
        options["json_schema"] = clean_schema(output_type.model_json_schema())
        self._check_tokens()
        sent = system + self._window(run_messages)
        reply = await self._turn(sent, self._cap_tokens(options))
        event = self._llm_event(reply, len(sent), "output")
        run_messages.append(reply.to_message())
        try:
            return output_type.model_validate_json(reply.content or ""), event
        except (pydantic.ValidationError, ValueError) as exc:
            hint = (
                "raise max_tokens"
                if reply.finish_reason == "length"
                else "use a model with constrained decoding"
            )
            raise OutputParseError(
                f"the final answer of agent {self.agent.name!r} is not a valid {output_type.__name__} ({exc}): {hint}"
            ) from None

    # ---- tool calls --------------------------------------------------------------------------
    async def _run_calls(
        self, calls: tuple[ToolCall, ...], run_messages: list[dict[str, Any]]
    ) -> AsyncIterator[TraceEvent]:
        policy = self.agent.policy
        step = self._step - 1
        jobs: list[Any] = []
        for call in calls:
            self._calls += 1
            yield self._event(
                "tool_call", {"call_id": call.id, "name": call.name, "arguments": call.arguments}, step
            )
            tool = self.agent.tool_map.get(call.name)
            reason = policy.precheck(tool, call)
            if reason is None and policy.max_tool_calls is not None and self._calls > policy.max_tool_calls:
                reason = f"the tool-call limit of this run ({policy.max_tool_calls}) is reached: answer now"
            kwargs: dict[str, Any] | None = None
            error: dict[str, str] | None = None
            if reason is None:
                assert tool is not None
                try:
                    kwargs = tool.validate(call.arguments)
                except ToolArgumentsError as exc:
                    error = {"type": "invalid_arguments", "message": str(exc)}
                else:
                    reason = await policy.authorize(tool, call, kwargs)
            if reason is not None:
                yield self._event(
                    "denied",
                    {"call_id": call.id, "name": call.name, "arguments": call.arguments, "reason": reason},
                    step,
                )
                error = {"type": "permission_denied", "message": reason}
            jobs.append(self._invoke(tool, kwargs) if error is None else _done(error))
        results = await self._bounded(asyncio.gather(*jobs))
        for call, (content, error, seconds) in zip(calls, results, strict=True):
            run_messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
            yield self._event(
                "tool_result",
                {
                    "call_id": call.id,
                    "name": call.name,
                    "content": content,
                    "error": error,
                    "latency_ms": round(seconds * 1000, 3),
                },
                step,
            )

    async def _invoke(self, tool: Tool | None, kwargs: dict[str, Any] | None) -> tuple[str, Any, float]:
        assert tool is not None and kwargs is not None
        t0 = time.monotonic()
        try:
            # Validated already: call the function itself (a sync one in a worker thread).
            if tool.is_async:
                value = await tool.fn(**kwargs)
            else:
                value = await asyncio.to_thread(tool.fn, **kwargs)
            return to_content(value), None, time.monotonic() - t0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any tool failure goes back to the model, never up
            kind = "ToolError" if isinstance(exc, ToolError) else type(exc).__name__
            error = {"type": kind, "message": str(exc) or kind}
            return json.dumps({"error": error}, ensure_ascii=False), error, time.monotonic() - t0

    # ---- events ------------------------------------------------------------------------------
    def _event(self, kind: str, data: Mapping[str, Any], step: int | None = None) -> TraceEvent:
        event = TraceEvent(
            kind,  # type: ignore[arg-type]
            self.agent.name,
            self._step if step is None else step,
            time.monotonic() - self._start,
            dict(data),
        )
        self._trace.append(event)
        return event


async def _done(error: dict[str, str]) -> tuple[str, Any, float]:
    return json.dumps({"error": error}, ensure_ascii=False), error, 0.0


def _answer_unanswered(messages: list[dict[str, Any]], reason: str) -> None:
    """Give every tool call a result: a run stopped mid-call (timeout) would otherwise leave a
    call without its answer in the conversation (and in memory), which confuses the next turn."""
    answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    for i in range(len(messages) - 1, -1, -1):
        calls = messages[i].get("tool_calls") or ()
        missing = [c["id"] for c in calls if c["id"] not in answered]
        if not missing:
            continue
        error = {"type": "cancelled", "message": f"the run stopped ({reason}) before this call finished"}
        for call_id in missing:
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"error": error})}
            )
        break
