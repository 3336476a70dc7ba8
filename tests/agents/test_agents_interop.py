"""LangChain interop with the real langchain-core: our tool invoked as a LangChain tool, and a
LangChain tool called by our agent (validated by its schema first)."""

from __future__ import annotations

import asyncio

import pytest
from scripted import ScriptedModel, calls

from jamba_stack.agents import Agent, tool
from jamba_stack.agents.interop import from_langchain, to_langchain

lc_tools = pytest.importorskip("langchain_core.tools")


@tool
def area(width: float, height: float = 1.0) -> float:
    """Area of a rectangle.

    Args:
        width: the width.
        height: the height.
    """
    return width * height


def test_our_tool_as_a_langchain_tool() -> None:
    lc = to_langchain(area)
    assert (
        isinstance(lc, lc_tools.BaseTool) and lc.name == "area" and lc.description == "Area of a rectangle."
    )
    assert lc.invoke({"width": 3, "height": 2}) == 6.0
    assert asyncio.run(lc.ainvoke({"width": 2})) == 2.0
    assert set(lc.args) == {"width", "height"}


def test_langchain_tool_used_by_our_agent() -> None:
    @lc_tools.tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    ours = from_langchain(shout)
    assert ours.definition()["function"]["parameters"]["properties"] == {"text": {"type": "string"}}
    assert ours.definition()["function"]["parameters"]["additionalProperties"] is False
    model = ScriptedModel([calls(("shout", {"text": "hi"}), ("shout", {"txt": "hi"})), "HI"])
    result = Agent("lc", "", [ours], model).run("shout hi")
    outs = [(e["content"], e["error"]) for e in result.trace if e.type == "tool_result"]
    assert outs[0] == ("HI", None) and outs[1][1]["type"] == "invalid_arguments"
    assert result.final_output == "HI"
