"""Typed errors of the agent SDK. Errors a tool raises while it runs are not here: those go back to
the model as tool results (`ToolError` lets a tool choose the message the model sees)."""

from __future__ import annotations

from jamba_runtime.errors import JambaStackError


class AgentError(JambaStackError):
    """Base of the agent SDK's errors."""

    http_status = 400
    code = "agent_error"


class ToolDefinitionError(AgentError):
    """A function cannot become a tool (a parameter without a type hint, `*args`, a bad name), or
    an agent's tools clash (two with one name)."""

    code = "invalid_tool"


class ToolArgumentsError(AgentError):
    """Arguments do not fit a tool's parameters. In a run this goes back to the model, which may
    retry; it is raised only to direct callers of `Tool.validate` / `Tool.acall`."""

    code = "invalid_tool_arguments"


class ToolError(AgentError):
    """Raise this from a tool to tell the model what went wrong, in your words: the run sends
    `{"error": {"type": "ToolError", "message": ...}}` as the tool result and goes on."""

    code = "tool_error"


class AgentConfigError(AgentError):
    """An `Agent`, `Policy`, memory or scheduler was given a value it cannot use."""

    code = "invalid_agent_config"


class OutputParseError(AgentError):
    """The final answer does not parse as the agent's `output_type` (possible only when the model
    does not constrain decoding, or `max_tokens` cut the JSON)."""

    code = "invalid_agent_output"
