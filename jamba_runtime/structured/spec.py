"""The structured-output spec: `StructuredOutput`, what an output must be, validated where it is made.

A request asks for structured output with a `StructuredOutput` in its `SamplingParams`. When the
request is added, the spec is compiled to an llguidance grammar for the engine's tokenizer (once per
spec: `GrammarCompiler` keeps an LRU cache of compiled matchers keyed by the spec's JSON and the
tokenizer) and the sequence gets its own `GrammarMatcher`. Each step, before sampling, the engine
fills one row of a token bitmask per constrained sequence (`step_masks.MaskWorker`), the sampler sets the
logits of forbidden tokens to -inf (`apply_token_bitmask`), and the sampled token advances the
matcher. End-of-sequence tokens are allowed only where the grammar accepts, and are the only
tokens allowed once it is complete, so a structured output ends exactly when it is whole.

Why llguidance (and not xgrammar): measured in `docs/structured.md`.

Tool calls use Jamba's format, `<tool_calls>[{"name": ..., "arguments": {...}}, ...]</tool_calls>`,
laid out as the chat template renders them. `<tool_calls>` and `</tool_calls>` are special tokens:
the grammar names them by id, so the model can only open a block with the special token (never by
spelling it out in text), and free text cannot contain special tokens. A sequence whose spec has
`tools` is detokenized with `skip_special_tokens=False`, so its text keeps the block for
`parse_tool_calls` (`structured/tools.py`).

This module imports none of the grammar machinery (compiler, matcher, masks, tools): they import
it, so `SamplingParams` can hold a spec without loading llguidance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jamba_runtime.errors import InvalidRequestError

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class StructuredOutput:
    """What a structured output must be. Exactly one of these is set.

    Attributes:
        json_object: any JSON object.
        json_schema: a JSON object valid under this JSON Schema (Draft 2020-12), enforced
            strictly: a keyword the grammar cannot enforce is refused, never ignored.
        regex: text matching this regular expression in full (Rust `regex` syntax; no
            look-around or backreferences; `\\d`, `\\w`, `\\s` match ASCII only).
        choice: exactly one of these strings.
        tools: OpenAI tool definitions `{"type": "function", "function": {"name", "description",
            "parameters"}}`; calls are written as Jamba's `<tool_calls>[...]</tool_calls>` block,
            each call's arguments valid under its tool's `parameters`.
        tool_choice: with `tools`: "auto" (text, then optionally one block of calls), "required"
            (only a block of calls), "none" (text only, the block cannot start), or
            `{"type": "function", "function": {"name": ...}}` (only a block calling that tool).
        parallel_tool_calls: with `tools`: False allows one call per block (OpenAI's
            `parallel_tool_calls=false`); True (default) one or more.

    Lists are accepted for `choice` and `tools` and stored as tuples; dicts are deep-copied, so
    changing the caller's dict later changes nothing. Raises `InvalidRequestError` for a bad spec
    (the grammar itself is checked when the request is added).

    Example:
        >>> StructuredOutput(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}})
        >>> StructuredOutput(tools=(weather_tool,), tool_choice="required")
    """

    json_object: bool = False
    json_schema: dict | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    tools: tuple[dict, ...] | None = None
    tool_choice: str | dict = "auto"
    parallel_tool_calls: bool = True
    _key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> InvalidRequestError:
            return InvalidRequestError(f"structured output {name}={short_repr(value)} is invalid: {rule}")

        if not isinstance(self.json_object, bool):
            raise bad("json_object", self.json_object, "it must be true or false")
        if self.json_schema is not None:
            if not isinstance(self.json_schema, dict):
                raise bad("json_schema", self.json_schema, "it must be a JSON Schema object (a dict)")
            object.__setattr__(self, "json_schema", _plain_json("json_schema", self.json_schema))
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise bad("regex", self.regex, "it must be a non-empty string")
        if self.choice is not None:
            if isinstance(self.choice, str) or not isinstance(self.choice, Iterable):
                raise bad("choice", self.choice, "it must be a list of strings")
            choice = tuple(self.choice)
            if not choice or not all(isinstance(c, str) and c for c in choice):
                raise bad("choice", self.choice, "it must be a non-empty list of non-empty strings")
            object.__setattr__(self, "choice", choice)
        if self.tools is not None:
            if isinstance(self.tools, dict) or not isinstance(self.tools, Iterable):
                raise bad("tools", self.tools, "it must be a list of tool definitions")
            tools = tuple(_plain_json("tools", dict(t)) if isinstance(t, dict) else t for t in self.tools)
            object.__setattr__(self, "tools", tools)
            _check_tools(tools)
        modes = [
            n
            for n, v in (
                ("json_object", self.json_object),
                ("json_schema", self.json_schema is not None),
                ("regex", self.regex is not None),
                ("choice", self.choice is not None),
                ("tools", self.tools is not None),
            )
            if v
        ]
        if len(modes) != 1:
            raise InvalidRequestError(
                f"structured output sets {', '.join(modes) or 'nothing'}: set exactly one of "
                "json_object, json_schema, regex, choice, tools"
            )
        tool_choice = self.tool_choice
        if isinstance(tool_choice, dict):
            tool_choice = _plain_json("tool_choice", tool_choice)
            object.__setattr__(self, "tool_choice", tool_choice)
        if not isinstance(self.parallel_tool_calls, bool):
            raise bad("parallel_tool_calls", self.parallel_tool_calls, "it must be true or false")
        if self.tools is None:
            if tool_choice != "auto":
                raise bad("tool_choice", tool_choice, "it needs tools")
            if not self.parallel_tool_calls:
                raise bad("parallel_tool_calls", False, "it needs tools")
        else:
            _check_tool_choice(tool_choice, {tool_function(t)["name"] for t in self.tools})
        # Key order is kept: property order in a schema is the order the grammar writes them.
        key = json.dumps(
            {
                "json_object": self.json_object,
                "json_schema": self.json_schema,
                "regex": self.regex,
                "choice": self.choice,
                "tools": self.tools,
                "tool_choice": tool_choice if self.tools is not None else None,
                "parallel_tool_calls": self.parallel_tool_calls,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        object.__setattr__(self, "_key", key)

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def key(self) -> str:
        """The spec as canonical JSON (what grammars are cached under)."""
        return self._key

    @property
    def free_text_first(self) -> bool:
        """True when the output may start with free text (tools under "auto" or "none"): stop
        strings and stop token ids apply to that text, and nothing after `<tool_calls>`."""
        return self.tools is not None and self.tool_choice in ("auto", "none")


def tool_function(tool: dict) -> dict:
    """The function part of an OpenAI tool definition (`tool["function"]`, or the tool itself
    when it is given bare)."""
    return tool["function"] if "function" in tool else tool


def short_repr(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain_json(name: str, value: Any) -> Any:
    """A deep copy made of plain JSON types; refuses what JSON cannot hold."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(
            f"structured output {name} is not plain JSON ({e}): pass dicts, lists, "
            "strings, finite numbers, booleans and None only"
        ) from None


def _check_tools(tools: tuple) -> None:
    if not tools:
        raise InvalidRequestError(
            "structured output tools=() is invalid: give at least one tool, or leave tools unset"
        )
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequestError(
                f"tools[{i}] is not a tool definition: pass "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
            )
        if tool.get("type", "function") != "function":
            raise InvalidRequestError(
                f'tools[{i}] has type {tool.get("type")!r}: only "function" tools are supported'
            )
        fn = tool_function(tool)
        if not isinstance(fn, dict):
            raise InvalidRequestError(f"tools[{i}].function must be an object with name and parameters")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidRequestError(
                f"tools[{i}] has name {name!r}: a tool name is 1-64 letters, digits, '_', '-' or '.'"
            )
        if name in names:
            raise InvalidRequestError(f"tools[{i}]: two tools are named {name!r}: tool names must be unique")
        names.add(name)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequestError(
                f"tool {name!r}: parameters must be a JSON Schema object, got {short_repr(params)}"
            )
        if isinstance(params, dict) and params.get("type", "object") != "object":
            raise InvalidRequestError(
                f"tool {name!r}: parameters has type {params.get('type')!r}: arguments are a JSON object, "
                'so parameters must be a schema with "type": "object"'
            )


def _check_tool_choice(tool_choice: object, names: set[str]) -> None:
    if isinstance(tool_choice, str):
        if tool_choice not in ("auto", "required", "none"):
            raise InvalidRequestError(
                f'tool_choice={tool_choice!r} is invalid: use "auto", "required", "none" or '
                '{"type": "function", "function": {"name": ...}}'
            )
        return
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if (
        not isinstance(tool_choice, dict)
        or tool_choice.get("type", "function") != "function"
        or not isinstance(name, str)
    ):
        raise InvalidRequestError(
            f"tool_choice={short_repr(tool_choice)} is invalid: name a tool as "
            '{"type": "function", "function": {"name": ...}}'
        )
    if name not in names:
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not among the tools ({', '.join(sorted(names))}): "
            "add its definition to tools or name another"
        )
