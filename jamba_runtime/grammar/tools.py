"""The grammar of Jamba's tool-call block, and how a tool definition's parts are read.

Calls are written as the chat template renders an assistant's calls:
`<tool_calls>[\\n    {"name": "f", "arguments": {...}},\\n    ...\\n]</tool_calls>`, each call's
arguments valid under its tool's `parameters` (narrowed by `narrow_schema`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from jamba_runtime.json_schema_rules import JSON_OPTIONS, narrow_schema

if TYPE_CHECKING:
    from jamba_runtime.structured import StructuredOutput

TOOL_CALLS_START = "<tool_calls>"
TOOL_CALLS_END = "</tool_calls>"


def tool_function(tool: dict) -> dict:
    """The function part of an OpenAI tool definition (`tool["function"]`, or the tool itself
    when it is given bare)."""
    return tool["function"] if "function" in tool else tool


def tool_parameters(tool: dict) -> dict:
    """The JSON Schema a call's arguments must satisfy (no parameters: an empty object)."""
    params = tool_function(tool).get("parameters")
    if params is None:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    if "type" not in params:
        params = {"type": "object", **params}
    return params


def tools_lark(spec: StructuredOutput, start: str, end: str) -> str:
    """Lark for the tool-call block of `spec` (which has `tools`), laid out as the chat template
    renders it. `start` and `end` are the tags as Lark terms (a special token `<[id]>`, or a
    quoted string for a tokenizer without the special token)."""
    assert spec.tools is not None
    choice = spec.tool_choice
    tools = list(spec.tools)
    if isinstance(choice, dict):
        tools = [t for t in tools if tool_function(t)["name"] == choice["function"]["name"]]
    lines = ["%llguidance {}"]
    if choice == "none":
        lines.append("start: TEXT?")
    elif choice == "auto":
        lines.append("start: TEXT? block?")
    else:
        lines.append("start: block")
    more = ' (",\\n    " call)*' if spec.parallel_tool_calls else ""
    lines.append(f'block: {start} "[\\n    " call{more} "\\n]" {end}')
    lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
    for i, tool in enumerate(tools):
        name = tool_function(tool)["name"]
        head = '{"name": ' + json.dumps(name) + ', "arguments": '
        params = {"x-guidance": JSON_OPTIONS, **narrow_schema(tool_parameters(tool))}
        lines.append(f"call_{i}: {json.dumps(head)} args_{i} " + '"}"')
        lines.append(f"args_{i}: %json " + json.dumps(params, ensure_ascii=False))
    # Free text: any characters; special tokens are never text, so it cannot hold a tag.
    lines.append(r"TEXT: /(.|\n)+/")
    return "\n".join(lines) + "\n"
