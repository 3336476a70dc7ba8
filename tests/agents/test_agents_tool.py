"""`@tool`: JSON Schema from hints and docstrings, validation before the call, OpenAI export."""

from __future__ import annotations

import asyncio
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel

from jamba_stack.agents import Tool, ToolArgumentsError, ToolDefinitionError, tool
from jamba_stack.agents.tool import parse_docstring, to_content


class Point(BaseModel):
    x: float
    y: float


@tool
def move(point: Point, unit: Literal["m", "km"] = "m", tags: list[str] | None = None) -> dict:
    """Move a point somewhere.

    Longer text that is not the summary.

    Args:
        point: where to start.
        unit: the unit of the
            coordinates.
        tags: labels.

    Returns:
        the moved point.
    """
    return {"x": point.x + 1, "unit": unit, "tags": tags}


@tool(name="slow-add", side_effects=True)
async def add(a: int, b: int) -> int:
    """Add.

    :param a: left
    :param b: right
    """
    await asyncio.sleep(0)
    return a + b


def test_schema_from_hints_and_docstring() -> None:
    d = move.definition()
    assert d["type"] == "function" and d["function"]["name"] == "move"
    assert d["function"]["description"] == "Move a point somewhere."
    params = d["function"]["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    assert params["required"] == ["point"] and params["additionalProperties"] is False
    assert params["properties"]["unit"] == {
        "default": "m",
        "description": "the unit of the coordinates.",
        "enum": ["m", "km"],
        "type": "string",
    }
    assert params["properties"]["point"]["description"] == "where to start."
    assert "title" not in str(params)  # pydantic's titles are dropped
    assert add.name == "slow-add" and add.side_effects and add.is_async
    assert add.parameters["properties"]["a"]["description"] == "left"


def test_arguments_validated_before_the_call() -> None:
    assert asyncio.run(move.acall({"point": {"x": 1, "y": 2}})) == {"x": 2.0, "unit": "m", "tags": None}
    assert asyncio.run(add.acall({"a": "2", "b": 3})) == 5  # coerced as pydantic does
    with pytest.raises(ToolArgumentsError, match=r"point.x: Input should be a valid number"):
        asyncio.run(move.acall({"point": {"x": "far", "y": 2}}))
    with pytest.raises(ToolArgumentsError, match=r"unit"):
        move.validate({"point": {"x": 1, "y": 2}, "unit": "mile"})
    with pytest.raises(ToolArgumentsError, match=r"speed: Extra inputs are not permitted"):
        move.validate({"point": {"x": 1, "y": 2}, "speed": 3})
    with pytest.raises(ToolArgumentsError, match=r"b: Field required"):
        add.validate({"a": 1})
    assert move(Point(x=0, y=0)) == {"x": 1.0, "unit": "m", "tags": None}


def test_functions_that_cannot_be_tools() -> None:
    def untyped(a, b: int) -> int:  # noqa: ANN001
        return b

    def star(*args: int) -> int:
        return 0

    with pytest.raises(ToolDefinitionError, match="'a' has no type hint"):
        tool(untyped)
    with pytest.raises(ToolDefinitionError, match=r"\*args"):
        tool(star)
    with pytest.raises(ToolDefinitionError, match="name 'bad name'"):
        tool(name="bad name")(lambda: 0)
    with pytest.raises(ToolDefinitionError, match="'<lambda>' is invalid"):
        tool(lambda: 0)
    assert isinstance(tool(name="zero")(lambda: 0), Tool)


def test_docstring_and_content_helpers() -> None:
    summary, args = parse_docstring("Sum.\n\nArgs:\n    a (int): one\n    b: two\n        more\n")
    assert summary == "Sum." and args == {"a": "one", "b": "two more"}
    assert to_content("hi") == "hi" and to_content(Point(x=1, y=2)) == '{"x":1.0,"y":2.0}'
    assert to_content([1, {"a": None}]) == '[1,{"a":null}]'
