"""Agent SDK: Agent, @tool, run loop, policy, memory, tracing, many agents on one runtime.

    >>> from agents import Agent, Policy, tool
    >>> @tool
    ... def add(a: float, b: float) -> float:
    ...     '''Add two numbers.'''
    ...     return a + b
    >>> agent = Agent(name="calc", instructions="Use the tools.", tools=[add],
    ...               model="data/models/tiny", policy=Policy(allowed_tools=["add"]))
    >>> result = agent.run("What is 2 + 3?")
    >>> result.final_output, result.trace_json()

Not the `openai-agents` package (which also imports as `agents`); this one is jamba-stack's.
"""

from jamba_stack.agents.agent import Agent, resolve_model
from jamba_stack.agents.errors import (
    AgentConfigError,
    AgentError,
    OutputParseError,
    ToolArgumentsError,
    ToolDefinitionError,
    ToolError,
)
from jamba_stack.agents.memory import ConversationMemory
from jamba_stack.agents.policy import Policy
from jamba_stack.agents.run import AgentRun, RunResult
from jamba_stack.agents.tool import Tool, tool
from jamba_stack.agents.tracing import TraceEvent, load_trace, save_trace

__all__ = [
    "Agent",
    "AgentConfigError",
    "AgentError",
    "AgentRun",
    "ConversationMemory",
    "OutputParseError",
    "Policy",
    "RunResult",
    "Tool",
    "ToolArgumentsError",
    "ToolDefinitionError",
    "ToolError",
    "TraceEvent",
    "load_trace",
    "resolve_model",
    "save_trace",
    "tool",
]
