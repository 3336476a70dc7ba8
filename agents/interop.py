"""LangChain interop: our tools as LangChain tools, LangChain tools as ours.

    >>> lc_tool = to_langchain(get_weather)          # a langchain_core StructuredTool
    >>> ours = from_langchain(some_langchain_tool)   # a Tool an Agent can use

Needs `langchain-core` (imported when called; raises `AgentConfigError` naming the install
command when it is missing).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict

from jamba_stack.agents.errors import AgentConfigError, ToolDefinitionError
from jamba_stack.agents.tool import Tool
from jamba_stack.agents.tracing import jsonable


def _langchain_tools() -> Any:
    try:
        from langchain_core import tools
    except ImportError:
        raise AgentConfigError("LangChain interop needs langchain-core: pip install langchain-core") from None
    return tools


def to_langchain(tool: Tool) -> Any:
    """`tool` as a LangChain `StructuredTool` (same name, description and argument model; our
    validation runs on invoke, as in an agent run)."""
    lc = _langchain_tools()

    async def coroutine(**kwargs: Any) -> Any:
        return await tool.acall(kwargs)

    def func(**kwargs: Any) -> Any:
        return asyncio.run(tool.acall(kwargs))

    return lc.StructuredTool.from_function(
        func=func,
        coroutine=coroutine,
        name=tool.name,
        description=tool.description or tool.name,
        args_schema=tool.args_model,
    )


def from_langchain(lc_tool: Any, *, side_effects: bool = False) -> Tool:
    """A LangChain tool (`BaseTool`, e.g. from `@langchain_core.tools.tool`) as our `Tool`; it is
    invoked with `ainvoke` (LangChain runs sync tools in a thread). `side_effects`: as `@tool`.

    Raises `ToolDefinitionError` when its `args_schema` is not a pydantic model."""
    lc = _langchain_tools()
    if not isinstance(lc_tool, lc.BaseTool):
        raise ToolDefinitionError(f"{lc_tool!r} is not a LangChain BaseTool")
    schema = lc_tool.args_schema
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise ToolDefinitionError(
            f"LangChain tool {lc_tool.name!r} has args_schema {schema!r}: only pydantic models are supported"
        )
    # Extra arguments forbidden, as for our own tools (the schema tells a constrained model so).
    strict = type(
        schema.__name__, (schema,), {"model_config": ConfigDict(**schema.model_config, extra="forbid")}
    )

    async def call(**kwargs: Any) -> Any:
        return await lc_tool.ainvoke(jsonable(kwargs))

    return Tool(lc_tool.name, lc_tool.description or "", strict, call, side_effects)
