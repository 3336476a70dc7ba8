"""Jamba's tool-call block: its grammar, and the calls read back from an output's text.

Calls are written as the chat template renders an assistant's calls:
`<tool_calls>[\\n    {"name": "f", "arguments": {...}},\\n    ...\\n]</tool_calls>`, each call's
arguments valid under its tool's `parameters` (narrowed by `narrow_schema`); `parse_tool_calls`
splits such a text into its content and its calls.
"""

from __future__ import annotations

import json

from jamba_runtime.structured.json_schema import JSON_OPTIONS, narrow_schema
from jamba_runtime.structured.spec import StructuredOutput, short_repr, tool_function

TOOL_CALLS_START = "<tool_calls>"
TOOL_CALLS_END = "</tool_calls>"


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


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Split an assistant output into its content and its tool calls.

    `text` is a sequence's text decoded with special tokens kept (the engine does that for
    requests with `tools`). Returns the text before `<tool_calls>` (stripped) and the calls as
    `{"name": str, "arguments": dict}` in order; `(text.strip(), [])` when there is no block.

    Raises `ValueError` when the block is not whole JSON (an output cut off by max_tokens or the
    context limit, finish_reason "length").
    """
    start = text.find(TOOL_CALLS_START)
    if start < 0:
        return text.strip(), []
    content = text[:start].strip()
    body = text[start + len(TOOL_CALLS_START) :]
    end = body.find(TOOL_CALLS_END)
    if end >= 0:
        body = body[:end]
    try:
        items = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"the tool-call block is not complete JSON ({e}): the output was probably cut off "
            "by max_tokens; raise it"
        ) from None
    if isinstance(items, dict):
        items = [items]
    calls: list[dict] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"tool call {short_repr(item)} has no name")
        args = item.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"tool call {item['name']!r} has arguments that are not JSON ({e})"
                ) from None
        calls.append({"name": item["name"], "arguments": args})
    return content, calls
