"""`Agent`: instructions, tools, a model, and optionally memory, a policy and an output type.

>>> from agents import Agent, Policy, tool
>>> @tool
... def add(a: float, b: float) -> float:
...     '''Add two numbers.'''
...     return a + b
>>> agent = Agent(name="calc", instructions="Use the tools.", tools=[add],
...               model="data/models/tiny", policy=Policy(allowed_tools=["add"], max_steps=4))
>>> result = agent.run("What is 2 + 3?")
>>> result.final_output, result.stop_reason, result.trace_json()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jamba_runtime.llm import LLM
from jamba_stack.agents.errors import AgentConfigError, AgentError, ToolDefinitionError
from jamba_stack.agents.memory import ConversationMemory
from jamba_stack.agents.policy import Policy
from jamba_stack.agents.run import AgentRun, RunResult
from jamba_stack.agents.tool import Tool, as_tool
from jamba_stack.agents.tracing import TraceEvent
from jamba_stack.chat import ChatModel, chat_model

ToolChoice = str | Mapping[str, Any] | Callable[[int], Any]
ModelSpec = ChatModel | LLM | str | Path


def resolve_model(model: ModelSpec, api_key: str | None = None) -> ChatModel:
    """A `ChatModel` for `model`: itself; an `LLM` (in-process); an OpenAI-compatible base URL
    ("http(s)://..."); or a checkpoint directory, loaded in-process once per process and shared by
    every agent given the same path (so they share one runtime)."""
    _check_model_spec(model)
    if isinstance(model, ChatModel):
        return model
    return chat_model(model, api_key=api_key, shared=True)


def _check_model_spec(model: object) -> None:
    if not isinstance(model, ChatModel | LLM | str | Path):
        raise AgentConfigError(
            f"model={model!r} is not a model: pass a ChatModel, an LLM, a checkpoint path or a server URL"
        )


class Agent:
    """An agent: a model that pursues a goal with tools, under a policy.

    Args:
        name: names the agent in traces (and as a hand-off tool).
        instructions: the system message.
        tools: `@tool` functions (or plain typed functions, made tools here).
        model: a `ChatModel`, an `LLM`, a checkpoint path (in-process) or an OpenAI-compatible
            base URL (then `api_key`). A path or URL is opened on first use (`Agent.model`),
            not here: making an agent loads nothing.
        memory: `ConversationMemory` carried across runs (None: each run starts fresh).
        policy: `Policy` (default: all tools allowed, side-effecting ones need confirmation, 10
            steps).
        output_type: a pydantic model: the final answer is JSON under its schema, returned parsed.
        tool_choice: "auto", "required", "none", a named tool, or a function of the step (from 0)
            returning one of those (e.g. tools first, then an answer).
        model_options: more `ChatOptions` for every turn (temperature, max_tokens, seed, ...).

    Raises `ToolDefinitionError` for clashing tool names, `AgentConfigError` for a policy that
    names tools the agent lacks, or a bad model.
    """

    def __init__(
        self,
        name: str,
        instructions: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        model: ChatModel | LLM | str | Path | None = None,
        memory: ConversationMemory | None = None,
        policy: Policy | None = None,
        output_type: type[BaseModel] | None = None,
        *,
        tool_choice: ToolChoice = "auto",
        model_options: Mapping[str, Any] | None = None,
        api_key: str | None = None,
    ) -> None:
        if model is None:
            raise AgentConfigError(
                f"agent {name!r} has no model: pass model=a ChatModel, a checkpoint path or a server URL"
            )
        self.name = name
        self.instructions = instructions
        self.tools: list[Tool] = [as_tool(t) for t in tools]
        self.tool_map: dict[str, Tool] = {}
        for t in self.tools:
            if t.name in self.tool_map:
                raise ToolDefinitionError(f"agent {name!r} has two tools named {t.name!r}: rename one")
            self.tool_map[t.name] = t
        _check_model_spec(model)
        self._model_spec: ModelSpec = model
        self._api_key = api_key
        self._model: ChatModel | None = None
        self.memory = memory
        self.policy = policy or Policy()
        self.policy.check_tools(self.tools)
        if output_type is not None and not (
            isinstance(output_type, type) and issubclass(output_type, BaseModel)
        ):
            raise AgentConfigError(
                f"output_type={output_type!r} is invalid: pass a pydantic BaseModel subclass"
            )
        self.output_type = output_type
        self.tool_choice = tool_choice
        options = dict(model_options or {})
        clash = {"tools", "tool_choice", "json_mode", "json_schema"} & set(options)
        if clash:
            raise AgentConfigError(
                f"model_options {sorted(clash)} are set by the agent: use tools=, tool_choice= or output_type="
            )
        self.model_options = options

    @property
    def model(self) -> ChatModel:
        """The agent's `ChatModel`, opened on first use (loading an in-process checkpoint, shared
        by every agent given the same path). Memory then counts tokens with the model's tokenizer."""
        if self._model is None:
            self._model = resolve_model(self._model_spec, self._api_key)
            if self.memory is not None:
                self.memory.use_counter(self._model.count_tokens)
        return self._model

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, tools={[t.name for t in self.tools]})"

    # ---- running -------------------------------------------------------------------------------
    def start(self, goal: str, model: ChatModel | None = None) -> AgentRun:
        """A run of `goal`, not started: drive it with `events()` or `run()` (used by schedulers)."""
        if not isinstance(goal, str) or not goal.strip():
            raise AgentConfigError(f"goal={goal!r} is empty: pass the task as text")
        return AgentRun(self, goal, model or self.model)

    async def arun(self, goal: str) -> RunResult:
        """Run to the end; see `RunResult`. Raises the model's errors (`JambaStackError`s); tool
        errors and denials go back to the model instead."""
        return await self.start(goal).run()

    def run(self, goal: str) -> RunResult:
        """`arun` from synchronous code. Raises `AgentError` when called inside an event loop."""
        _no_running_loop("run", "await agent.arun(goal)")
        return asyncio.run(self.arun(goal))

    def astream(self, goal: str) -> AsyncIterator[TraceEvent]:
        """The run's events as they happen; the last is `final`, with `.result`."""
        return self.start(goal).events()

    def stream(self, goal: str) -> Iterator[TraceEvent]:
        """`astream` from synchronous code (runs its own event loop while iterated)."""
        _no_running_loop("stream", "async for event in agent.astream(goal)")
        return _sync_iter(self.astream(goal))

    def as_tool(self, name: str | None = None, description: str | None = None) -> Tool:
        """This agent as a tool another agent can hand a task to (see `jamba_stack.agents.builtin.handoff`)."""
        from jamba_stack.agents.builtin import handoff

        return handoff(self, name=name, description=description)


def _no_running_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AgentError(f"agent.{what}() was called inside a running event loop: use `{instead}` there")


def _sync_iter(events: AsyncIterator[TraceEvent]) -> Iterator[TraceEvent]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                event = loop.run_until_complete(anext(events))
            except StopAsyncIteration:
                return
            yield event
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            loop.run_until_complete(closer())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
