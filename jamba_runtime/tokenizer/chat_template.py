"""Chat-template rendering: a Jinja environment that behaves like `transformers`', and our built-in
Jamba 1.5+ template (`templates/jamba_chat.jinja`).

Checkpoint templates are written against `transformers`' `apply_chat_template`, so this module
copies its rendering behaviour (pinned `transformers==5.24.0`, `utils/chat_template_utils.py`):
an immutable sandbox with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a
`{% generation %}` block tag, a `tojson` filter that neither escapes HTML nor sorts keys, the
globals `raise_exception`, `strftime_now`, `dict` and a `namespace` that refuses underscore
names; messages lose keys whose value is None, and inputs are rebuilt from plain JSON types.
Key difference to transformers: tools must already be JSON schemas (no Python callables), and
the `reasoning_content` aliases are not added (no Jamba template reads them).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jamba_runtime.errors import InvalidRequestError, TokenizerError

BUILTIN_TEMPLATE_PATH = "templates/jamba_chat.jinja"

# Named special tokens a template sees as variables, as `transformers`' `special_tokens_map` gives.
SPECIAL_TOKEN_NAMES: tuple[str, ...] = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class TemplateRaisedError(jinja2.exceptions.TemplateError):
    """Raised by a template's own `raise_exception(message)`: the request is one it refuses."""


def load_builtin_template() -> str:
    """Return the source of jamba-stack's built-in Jamba 1.5+ chat template."""
    return (
        resources.files("jamba_runtime.tokenizer").joinpath(BUILTIN_TEMPLATE_PATH).read_text(encoding="utf-8")
    )


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body unchanged.

    transformers uses the tag to find assistant tokens for training masks; we only need templates
    that contain it to compile and render the same text.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise TemplateRaisedError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML and sorts keys; chat templates expect neither.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates, without exposing the `dict` type itself to the sandbox."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed names, which could reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # No named `self`, as in Jinja's Namespace, so that `namespace(self=...)` still works.
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed names on a namespace, got {name!r}"
            )


def make_environment() -> ImmutableSandboxedEnvironment:
    """Return a Jinja environment that renders chat templates as `transformers` 5.24 does."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template (cached by source text).

    Raises `TokenizerError` when the template is not valid Jinja.
    """
    try:
        return make_environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TokenizerError(
            f"chat template does not compile: {exc.message} (line {exc.lineno}); fix the template "
            "(tokenizer_config.json or chat_template.jinja) or pass another chat_template"
        ) from exc


def plain_data(value: Any) -> Any:
    """Rebuild `value` from plain JSON-like types (dict, list, tuple, str, int, float, bool, None).

    Pydantic models (`model_dump`) and dataclasses become dicts; str/int/float subclasses (enums)
    become their base type; anything else becomes a placeholder like "<ndarray>", so that no object
    with unexpected methods reaches the sandbox.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """Turn messages (dicts, pydantic models or dataclasses) into plain dicts without None values.

    Keys whose value is None are dropped, as transformers does: APIs send `content: null` next to
    `tool_calls`, and templates handle a missing key but would print "None".

    Raises `InvalidRequestError` when a message is not a mapping.
    """
    normalized: list[dict[str, Any]] = []
    for message in messages:
        plain = plain_data(message)
        if not isinstance(plain, dict):
            raise InvalidRequestError(
                f"chat messages must be objects with 'role' and 'content', got {type(message).__name__}"
            )
        normalized.append({k: v for k, v in plain.items() if v is not None})
    return normalized


def render_chat_template(
    source: str,
    messages: Sequence[Any],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render chat template `source` as `transformers`' `apply_chat_template(..., tokenize=False)`.

    `special_tokens` (e.g. {"bos_token": "<|startoftext|>"}) become template variables; `kwargs`
    override them and reach the template too (Jamba reads `knobs`, `generation_preamble`, ...).

    Raises `InvalidRequestError` when there are no messages or the template refuses the input (its
    `raise_exception`, or an error while rendering them), and `TokenizerError` when the template
    does not compile.
    """
    if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
        raise InvalidRequestError(
            "tools must be JSON schemas (dicts), e.g. {'type': 'function', 'function': {...}}"
        )
    if documents is not None and not all(isinstance(doc, Mapping) for doc in documents):
        raise InvalidRequestError("documents must be dicts, e.g. {'title': ..., 'text': ...}")
    chat = normalize_messages(messages)
    if not chat:
        raise InvalidRequestError("messages is empty: give at least one message")
    template = compile_template(source)
    variables = {**(special_tokens or {}), **kwargs}
    try:
        return template.render(
            messages=chat,
            tools=plain_data(list(tools)) if tools is not None else None,
            documents=plain_data(list(documents)) if documents is not None else None,
            add_generation_prompt=add_generation_prompt,
            **plain_data(variables),
        )
    except TemplateRaisedError as exc:
        raise InvalidRequestError(f"the chat template refused this request: {exc.message}") from exc
    except (jinja2.exceptions.TemplateError, TypeError, ValueError) as exc:
        raise InvalidRequestError(
            f"the chat template could not render these messages ({type(exc).__name__}: {exc}); check that "
            "every message has a 'role' and string 'content', and tools/documents are plain dicts"
        ) from exc
