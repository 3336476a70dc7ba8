"""Chat requests in OpenAI's shape, turned into what the runtime takes, and model output turned back.

Shared by the chat seam (`jamba_stack.chat.local`, in-process chat) and the HTTP API
(`jamba_stack.app.server`), so both render the same prompt, constrain the same way and parse tool
calls the same way:

- `ChatInputs.render(tokenizer)`: messages (text parts joined, `developer` as `system`), tools
  (left out under `tool_choice="none"`), AI21-style documents and JSON mode through the chat
  template; `continue_final_message` leaves the last assistant turn open.
- `ChatInputs.structured()`: the grammar constraint (`jamba_runtime.StructuredOutput`) for JSON
  mode, a JSON schema, a regex, a choice or tools; schemas and tool definitions are checked first,
  so a bad one is a 400 that names it.

Tool calls coming back (`ToolCall`, `ToolCallSplitter`) are in `jamba_stack.chat.tool_calls`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jamba_runtime import StructuredOutput, Tokenizer
from jamba_runtime.errors import InvalidRequestError

JSON_MODE_KNOBS = {"is_set": True, "response_format": "json_object"}
# Deepest nesting (arrays and objects) taken in a schema, tool parameters, document metadata or
# tool-call arguments: far beyond real use, far below where the code walking them runs out of stack.
MAX_NESTING = 64
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
STRUCTURED_OUTPUT_KEYS = ("json", "regex", "choice", "grammar")


class InvalidParameterError(InvalidRequestError):
    """A request parameter is invalid; `param` names it as the API spells it (e.g. "tools[0]")."""

    code = "invalid_value"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatInputs:
    """A chat request's content and output format, in OpenAI's shapes (plain dicts).

    Attributes:
        messages: [{"role", "content", ...}]; content a string or a list of {"type": "text"} parts.
        tools: OpenAI tool definitions ({"type": "function", "function": {name, parameters}}).
        tool_choice: "none", "auto", "required" or {"type": "function", "function": {"name"}}.
        documents: AI21's {"content", "id", "metadata"} or the template's {"text", "title", ...}.
        response_format: {"type": "text" | "json_object"} or {"type": "json_schema",
            "json_schema": {"name", "schema", "strict"}}.
        structured_outputs: vLLM's constraint, one of {"json": schema}, {"regex": str},
            {"choice": [str, ...]} ({"grammar": ...} is refused: no Lark/EBNF grammars here).
        continue_final_message: the last message is an assistant turn left open for the model
            to continue (vLLM's option of that name).
    """

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    documents: Sequence[Mapping[str, Any]] | None = None
    response_format: Mapping[str, Any] | None = None
    structured_outputs: Mapping[str, Any] | None = None
    continue_final_message: bool = False

    @property
    def uses_tools(self) -> bool:
        """Whether the model is offered the tools (and its output parsed for tool calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def format_type(self) -> str:
        return (self.response_format or {}).get("type") or "text"

    def check(self) -> None:
        """Validate tools, tool_choice, the output constraint, documents and the last message.

        Raises `InvalidParameterError` naming the bad parameter."""
        _check_tools(self.tools, self.tool_choice)
        fmt = self.format_type
        if fmt not in ("text", "json_object", "json_schema"):
            raise InvalidParameterError(
                f"response_format type {fmt!r} is not supported: use text, json_object or json_schema",
                "response_format.type",
            )
        if fmt == "json_schema":
            schema = ((self.response_format or {}).get("json_schema") or {}).get("schema")
            if not isinstance(schema, Mapping | bool):
                raise InvalidParameterError(
                    "response_format json_schema needs json_schema.schema, a JSON Schema object",
                    "response_format.json_schema.schema",
                )
            check_json_schema(schema, "response_format.json_schema.schema")
        check_structured_outputs(self.structured_outputs, fmt != "text")
        constrained = fmt != "text" or self.structured_outputs
        if self.uses_tools and constrained:
            raise InvalidParameterError(
                "tools and an output constraint (response_format json_object/json_schema, or a regex, "
                "choice or schema) cannot be combined: pick one, or pass tool_choice='none'",
                "response_format" if fmt != "text" else "structured_outputs",
            )
        if self.continue_final_message:
            last = self.messages[-1] if self.messages else {}
            if (
                last.get("role") != "assistant"
                or not isinstance(last.get("content"), str)
                or not last["content"]
            ):
                raise InvalidParameterError(
                    "continue_final_message needs a last message with role 'assistant' and text content to continue",
                    "messages",
                )
        template_documents(self.documents)
        _check_messages(self.messages)

    def text_size(self) -> int:
        """Characters of text in the messages and documents: the prompt has at least this many."""
        size = 0
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                size += len(content)
            elif isinstance(content, list):
                size += sum(len(p.get("text") or "") for p in content if isinstance(p, Mapping))
        for doc in self.documents or ():
            if isinstance(doc, Mapping):
                text = doc.get("content", doc.get("text"))
                size += len(text) if isinstance(text, str) else 0
        return size

    def render(self, tokenizer: Tokenizer) -> list[int]:
        """The prompt's token ids: the chat template with messages, tools, documents and JSON mode.

        Raises `InvalidParameterError` for bad inputs, `InvalidRequestError` when the template
        refuses the conversation."""
        return tokenizer.encode(self.render_text(tokenizer), add_special_tokens=False)

    def render_text(self, tokenizer: Tokenizer) -> str:
        """The prompt's text (what `render` tokenizes); raises as `render`."""
        self.check()
        kwargs: dict[str, Any] = {}
        if self.format_type != "text":
            kwargs["knobs"] = JSON_MODE_KNOBS
        messages = chat_messages(self.messages)
        text = tokenizer.apply_chat_template(
            messages,
            tools=[dict(t) for t in self.tools] if self.uses_tools else None,
            documents=template_documents(self.documents) or None,
            add_generation_prompt=not self.continue_final_message,
            **kwargs,
        )
        if self.continue_final_message:
            # The template closes the assistant turn after its text: cut there, so the model
            # continues the text (as transformers and vLLM do).
            content = messages[-1]["content"]
            at = text.rfind(content)
            if at < 0:
                raise InvalidParameterError(
                    "the chat template does not show the last assistant message as given, so it cannot "
                    "be continued: drop continue_final_message",
                    "messages",
                )
            text = text[: at + len(content)]
        return text

    def structured(self) -> StructuredOutput | None:
        """The `StructuredOutput` that constrains decoding, or None for free text.

        Raises `InvalidParameterError` for bad inputs (see `check`)."""
        self.check()
        fmt = self.format_type
        if self.uses_tools:
            choice = self.tool_choice if self.tool_choice is not None else "auto"
            return StructuredOutput(
                tools=tuple(dict(t) for t in self.tools or ()),
                tool_choice=dict(choice) if isinstance(choice, Mapping) else choice,
            )
        if fmt == "json_object":
            return StructuredOutput(json_object=True)
        if fmt == "json_schema":
            return StructuredOutput(json_schema=schema_dict(self.response_format["json_schema"]["schema"]))  # type: ignore[index]
        so = self.structured_outputs
        if not so:
            return None
        return structured_output_of(so)

    @property
    def constraint_param(self) -> str:
        """The request parameter that carries the output constraint, for error messages."""
        if self.uses_tools:
            return "tools"
        return "structured_outputs" if self.structured_outputs else "response_format"


def check_structured_outputs(so: Mapping[str, Any] | None, other_constraint: bool = False) -> None:
    """Validate vLLM's `structured_outputs` (exactly one of json, regex, choice; not beside
    another output constraint). Raises `InvalidParameterError` naming the bad key."""
    if not so:
        return
    given = [k for k in STRUCTURED_OUTPUT_KEYS if so.get(k) is not None]
    unknown = sorted(set(so) - set(STRUCTURED_OUTPUT_KEYS) - {"disable_any_whitespace", "whitespace_pattern"})
    if unknown:
        raise InvalidParameterError(
            f"structured_outputs has unknown keys {unknown}: use one of json, regex or choice",
            "structured_outputs",
        )
    if len(given) != 1 or other_constraint:
        raise InvalidParameterError(
            "give exactly one output constraint: one of structured_outputs json / regex / choice "
            "(or guided_json / guided_regex / guided_choice), or response_format, not several",
            "structured_outputs",
        )
    key = given[0]
    value = so[key]
    if key == "grammar":
        raise InvalidParameterError(
            "structured_outputs.grammar (guided_grammar) is not supported by this server: use json, "
            "regex or choice",
            "structured_outputs.grammar",
        )
    if key == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise InvalidParameterError(
                    f"structured_outputs.json is not JSON ({exc}): give a JSON Schema object",
                    "structured_outputs.json",
                ) from None
        if not isinstance(value, Mapping | bool):
            raise InvalidParameterError(
                "structured_outputs.json must be a JSON Schema object", "structured_outputs.json"
            )
        check_json_schema(value, "structured_outputs.json")
    elif key == "regex" and (not isinstance(value, str) or not value):
        raise InvalidParameterError(
            "structured_outputs.regex must be a non-empty string", "structured_outputs.regex"
        )
    elif key == "choice" and (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(c, str) and c for c in value)
    ):
        raise InvalidParameterError(
            "structured_outputs.choice must be a non-empty list of non-empty strings",
            "structured_outputs.choice",
        )


def structured_output_of(so: Mapping[str, Any]) -> StructuredOutput:
    """The `StructuredOutput` of a checked `structured_outputs` dict (`check_structured_outputs`)."""
    if so.get("json") is not None:
        schema = so["json"]
        return StructuredOutput(
            json_schema=schema_dict(json.loads(schema) if isinstance(schema, str) else schema)
        )
    if so.get("regex") is not None:
        return StructuredOutput(regex=so["regex"])
    return StructuredOutput(choice=tuple(so["choice"]))


def chat_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them: text parts joined, `developer` turns as `system`,
    None values dropped. Raises `InvalidParameterError` for non-text content parts."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        msg = {k: v for k, v in dict(message).items() if v is not None}
        if msg.get("role") == "developer":
            msg["role"] = "system"
        content = msg.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                    raise InvalidParameterError(
                        f"messages[{i}].content[{j}] is a {kind!r} part: only text parts are supported",
                        f"messages[{i}].content",
                    )
                texts.append(str(part.get("text") or ""))
            msg["content"] = "".join(texts)
        out.append(msg)
    return out


def template_documents(documents: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Documents as Jamba's template renders them: {"title"?, "text", other keys as metadata}.

    Takes AI21's API form {"content", "id"?, "metadata"?: {key: value} or [{"key", "value"}]} or the
    template's own {"text", "title"?, ...}. The `id` is not rendered: the template numbers documents
    from 0, and citations refer to those numbers.

    Raises `InvalidParameterError` for a document without text."""
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(documents or ()):
        if not isinstance(doc, Mapping):
            raise InvalidParameterError(f"documents[{i}] must be an object with 'content'", f"documents[{i}]")
        text = doc.get("content", doc.get("text"))
        if not isinstance(text, str):
            raise InvalidParameterError(
                f"documents[{i}] needs 'content' (a string), as in AI21's API", f"documents[{i}].content"
            )
        check_nesting({k: v for k, v in doc.items() if k not in ("content", "text")}, f"documents[{i}]")
        metadata = doc.get("metadata") or {}
        if isinstance(metadata, list):  # AI21's older form: [{"key": ..., "value": ...}]
            metadata = {str(m.get("key")): m.get("value") for m in metadata if isinstance(m, Mapping)}
        if not isinstance(metadata, Mapping):
            raise InvalidParameterError(
                f"documents[{i}].metadata must be an object", f"documents[{i}].metadata"
            )
        rendered: dict[str, Any] = {}
        title = doc.get("title", metadata.get("title"))
        if title is not None:
            rendered["title"] = title
        extra = {k: v for k, v in doc.items() if k not in ("content", "text", "title", "id", "metadata")}
        for key, value in {**metadata, **extra}.items():
            if key != "title" and value is not None:
                rendered[str(key)] = value
        rendered["text"] = text
        out.append(rendered)
    return out


def schema_dict(schema: Mapping[str, Any] | bool) -> dict[str, Any]:
    """A checked schema as the dict `StructuredOutput` takes: the `true` schema (any JSON value)
    is `{}` (`check_json_schema` refuses `false`)."""
    return {} if schema is True else dict(schema)  # type: ignore[arg-type]


def check_json_schema(schema: Mapping[str, Any] | bool, param: str) -> None:
    """Raise `InvalidParameterError` when `schema` is not a valid JSON Schema (by its metaschema),
    is the `false` schema (no value is valid), or is nested past `MAX_NESTING`.

    Patterns are not checked here: JSON Schema's are ECMA-262 regexes (`\\p{Letter}`), which
    Python's `re` does not read; the grammar compiler reads them and names a bad one."""
    if schema is False:
        raise InvalidParameterError(
            f"{param} is the false schema, which no value satisfies: give a schema some output can meet",
            param,
        )
    check_nesting(schema, param)
    # Imported here: with its optional format checkers installed, `import jsonschema` takes seconds.
    import jsonschema

    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        checker = jsonschema.FormatChecker([f for f in cls.FORMAT_CHECKER.checkers if f != "regex"])
        cls.check_schema(schema, format_checker=checker)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidParameterError(
            f"{param} is not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else ""),
            param,
        ) from None


def check_nesting(value: Any, param: str, limit: int = MAX_NESTING) -> None:
    """Raise `InvalidParameterError` when `value` nests arrays and objects more than `limit` deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            raise InvalidParameterError(
                f"{param} nests arrays and objects more than {limit} levels deep: flatten it"
                + (
                    " (a schema can reuse parts through $defs and $ref)"
                    if "schema" in param or "parameters" in param
                    else ""
                ),
                param,
            )
        stack.extend((child, depth + 1) for child in children)


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Tool-call arguments in assistant messages, nested no deeper than `MAX_NESTING`."""
    for i, message in enumerate(messages):
        for j, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") if isinstance(call, Mapping) else None
            args = fn.get("arguments") if isinstance(fn, Mapping) else None
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            if isinstance(args, str) and args.count("[") + args.count("{") > MAX_NESTING:
                try:
                    args = json.loads(args)
                except RecursionError:
                    raise InvalidParameterError(
                        f"{param} nests arrays and objects more than {MAX_NESTING} levels deep: flatten it",
                        param,
                    ) from None
                except ValueError:
                    continue  # not JSON: rendered as the text it is
            check_nesting(args, param)


def _check_tools(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> None:
    names: set[str] = set()
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise InvalidParameterError(
                f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", f"tools[{i}]"
            )
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidParameterError(
                f"tools[{i}].function.name {name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.'",
                f"tools[{i}].function.name",
            )
        if name in names:
            raise InvalidParameterError(
                f"tools[{i}]: the name {name!r} is used twice", f"tools[{i}].function.name"
            )
        names.add(name)
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, Mapping) or params.get("type", "object") != "object":
                raise InvalidParameterError(
                    f"tools[{i}].function.parameters must be a JSON Schema of type object",
                    f"tools[{i}].function.parameters",
                )
            check_json_schema(params, f"tools[{i}].function.parameters")
    if tool_choice in (None, "none", "auto"):
        return
    if tool_choice == "required":
        if not names:
            raise InvalidParameterError(
                "tool_choice 'required' needs at least one tool in tools", "tool_choice"
            )
        return
    fn = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if name is None:
        raise InvalidParameterError(
            f"tool_choice {tool_choice!r} is invalid: use 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}",
            "tool_choice",
        )
    if name not in names:
        raise InvalidParameterError(
            f"tool_choice names {name!r}, which is not in tools ({sorted(names)})", "tool_choice"
        )
