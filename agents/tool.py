"""`@tool`: a typed Python function (sync or async) as a tool the model can call.

    >>> @tool
    ... def get_weather(city: str, days: int = 1) -> str:
    ...     '''The weather forecast for a city.
    ...
    ...     Args:
    ...         city: the city's name.
    ...         days: how many days ahead (1-7).
    ...     '''
    ...     return f"sunny in {city} for {days} days"
    >>> get_weather.definition()    # OpenAI's {"type": "function", "function": {name, description, parameters}}
    >>> await get_weather.acall({"city": "Oslo"})   # validated, then called: "sunny in Oslo for 1 days"

The parameters' JSON Schema comes from the type hints (pydantic), their descriptions from the
docstring's `Args:` section (Google style) or `:param x:` lines; the first paragraph is the tool's
description. The schema forbids extra properties, so a constrained model cannot invent arguments.
Arguments are validated (and coerced, as pydantic does) before the call: a bad call never reaches
the function. A sync function runs in a worker thread, so parallel calls of it overlap: it must be
thread-safe.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from jamba_stack.agents.errors import ToolArgumentsError, ToolDefinitionError

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable the model can use: its name, description, parameter schema and function.

    Attributes:
        name: as the model calls it (1-64 letters, digits, `_`, `-`, `.`).
        description: what it does, for the model.
        args_model: the pydantic model of its arguments (extra arguments forbidden).
        fn: the function, called with the validated arguments as keywords.
        side_effects: True for tools that change the world (send, write, delete): a `Policy`
            asks its `confirm` hook before each call (see `jamba_stack.agents.policy`).
    """

    name: str
    description: str
    args_model: type[BaseModel]
    fn: Callable[..., Any]
    side_effects: bool = False
    parameters: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        if not _TOOL_NAME.match(self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.'"
            )
        object.__setattr__(self, "parameters", clean_schema(self.args_model.model_json_schema()))

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def definition(self) -> dict[str, Any]:
        """The tool as OpenAI's tool definition (what `ChatModel.chat(tools=...)` takes)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments checked and converted to the function's types, as keywords.

        Raises `ToolArgumentsError` naming each bad argument."""
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                f"tool {self.name!r} takes a JSON object of arguments, got {type(arguments).__name__}"
            )
        try:
            model = self.args_model.model_validate(dict(arguments))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolArgumentsError(f"bad arguments for tool {self.name!r}: {problems}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def acall(self, arguments: Mapping[str, Any]) -> Any:
        """Validate `arguments`, then call the function (a sync one in a worker thread) and return
        what it returns. Raises `ToolArgumentsError`, or whatever the function raises."""
        kwargs = self.validate(arguments)
        if self.is_async:
            return await self.fn(**kwargs)
        result = await asyncio.to_thread(self.fn, **kwargs)
        if inspect.isawaitable(result):  # a sync wrapper that returns a coroutine
            result = await result
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, as if it were not a tool (no validation)."""
        return self.fn(*args, **kwargs)

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        side_effects: bool = False,
    ) -> Tool:
        """A tool from a typed function; see the module docstring. Raises `ToolDefinitionError`
        for a parameter without a type hint, or `*args` / `**kwargs`."""
        tool_name = name or fn.__name__
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        return cls(
            tool_name,
            description if description is not None else summary,
            args_model_for(fn, tool_name, arg_docs),
            fn,
            side_effects,
        )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, side_effects: bool = False
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a `Tool` of a typed function: `@tool` or `@tool(name=..., side_effects=True)`.

    Raises `ToolDefinitionError` when the function cannot be described (see `Tool.from_function`)."""
    if fn is not None:
        return Tool.from_function(fn)

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, side_effects=side_effects)

    return wrap


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """`obj` if it is a `Tool`, else `Tool.from_function(obj)`."""
    if isinstance(obj, Tool):
        return obj
    if callable(obj):
        return Tool.from_function(obj)
    raise ToolDefinitionError(f"{obj!r} is not a tool: pass a @tool-decorated function or a Tool")


def args_model_for(fn: Callable[..., Any], tool_name: str, arg_docs: Mapping[str, str]) -> type[BaseModel]:
    """The pydantic model of `fn`'s parameters (extra properties forbidden)."""
    try:
        hints = get_type_hints(fn)
    except Exception as exc:  # a hint that does not resolve (a name not importable at run time)
        raise ToolDefinitionError(f"tool {tool_name!r}: its type hints do not resolve ({exc})") from None
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {tool_name!r}: *{param.name} / **{param.name} cannot be described to a model: "
                "name each parameter"
            )
        if param.name not in hints:
            raise ToolDefinitionError(
                f"tool {tool_name!r}: parameter {param.name!r} has no type hint: add one "
                "(it becomes the parameter's JSON Schema)"
            )
        default = ... if param.default is param.empty else param.default
        if isinstance(default, FieldInfo):  # `x: int = Field(1, ge=1)`: keep its constraints
            if default.description is None:
                default.description = arg_docs.get(param.name)
            fields[param.name] = (hints[param.name], default)
        else:
            fields[param.name] = (hints[param.name], Field(default, description=arg_docs.get(param.name)))
    model_name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", tool_name)) + "Args"
    return pydantic.create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the first paragraph, {parameter: description}) from a Google-style `Args:` section or
    reST `:param name: text` lines."""
    paragraphs = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
    summary = " ".join(paragraphs[0].split()) if paragraphs[0] else ""
    if summary.lower().startswith(("args:", "arguments:", "parameters:", ":param")):
        summary = ""
    args: dict[str, str] = {}
    for match in re.finditer(r"^\s*:param\s+(?:\w+\s+)?(\w+):\s*(.+)$", doc, re.MULTILINE):
        args[match.group(1)] = match.group(2).strip()
    section = re.search(
        r"^\s*(?:Args|Arguments|Parameters):\s*$(.*?)(?=^\s*\w[\w ]*:\s*$|\Z)", doc, re.M | re.S
    )
    if section:
        current: str | None = None
        for line in section.group(1).splitlines():
            m = re.match(r"^\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1).lstrip("*")
                args[current] = m.group(2).strip()
            elif current and line.strip():
                args[current] = f"{args[current]} {line.strip()}"
    return summary, args


def clean_schema(schema: Any) -> Any:
    """`schema` without pydantic's `title` annotations (they cost prompt tokens and tell the model
    nothing the property name does not). Property names called "title" are kept."""
    if isinstance(schema, list):
        return [clean_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: clean_schema(v) for k, v in value.items()}
        else:
            out[key] = clean_schema(value)
    return out


def to_content(value: Any) -> str:
    """A tool's return value as the text of a tool message: a string as it is, anything else as
    JSON (pydantic models, dataclasses and containers of them included; other objects as `str`)."""
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value, fallback=str).decode()
