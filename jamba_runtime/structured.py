"""Constrained decoding: structured-output specs, their grammars, and per-sequence token masks.

A request asks for structured output with a `StructuredOutput` in its `SamplingParams`. When the
request is added, the spec is compiled to an llguidance grammar for the engine's tokenizer (once per
spec: `GrammarCompiler` keeps an LRU cache of compiled matchers keyed by the spec's JSON and the
tokenizer) and the sequence gets its own `GrammarMatcher`. Each step, before sampling, the engine
fills one row of a token bitmask per constrained sequence (`fill_bitmasks`), the sampler sets the
logits of forbidden tokens to -inf (`apply_token_bitmask`), and the sampled token advances the
matcher. End-of-sequence tokens are allowed only where the grammar accepts, and are the only
tokens allowed once it is complete, so a structured output ends exactly when it is whole.

Why llguidance (and not xgrammar): measured in `docs/structured.md`.

Tool calls use Jamba's format, `<tool_calls>[{"name": ..., "arguments": {...}}, ...]</tool_calls>`,
laid out as the chat template renders them. `<tool_calls>` and `</tool_calls>` are special tokens:
the grammar names them by id, so the model can only open a block with the special token (never by
spelling it out in text), and free text cannot contain special tokens. A sequence whose spec has
`tools` is detokenized with `skip_special_tokens=False`, so its text keeps the block for
`parse_tool_calls`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.grammar_closing import ScanState, TokenTable, rollout, spec_hints

if TYPE_CHECKING:
    import llguidance

    from jamba_runtime.tokenizer import Tokenizer

TOOL_CALLS_START = "<tool_calls>"
TOOL_CALLS_END = "</tool_calls>"

# JSON as `json.dumps` writes it (and as Jamba's template renders tool arguments): ", " and ": ",
# no other whitespace. A fixed layout keeps a model from padding with whitespace forever.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Draft-4/7 forms that llguidance accepts without applying their old meaning; refuse them rather
# than risk output that an older-draft validator rejects.
_LEGACY_FORMS = "use the Draft 2020-12 form"

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# ---- the spec ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StructuredOutput:
    """What a structured output must be. Exactly one of these is set.

    Attributes:
        json_object: any JSON object.
        json_schema: a JSON object valid under this JSON Schema (Draft 2020-12), enforced
            strictly: a keyword the grammar cannot enforce is refused, never ignored.
        regex: text matching this regular expression in full (Rust `regex` syntax; no
            look-around or backreferences).
        choice: exactly one of these strings.
        tools: OpenAI tool definitions `{"type": "function", "function": {"name", "description",
            "parameters"}}`; calls are written as Jamba's `<tool_calls>[...]</tool_calls>` block,
            each call's arguments valid under its tool's `parameters`.
        tool_choice: with `tools`: "auto" (text, then optionally one block of calls), "required"
            (only a block of calls), "none" (text only, the block cannot start), or
            `{"type": "function", "function": {"name": ...}}` (only a block calling that tool).

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
    _key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> InvalidRequestError:
            return InvalidRequestError(f"structured output {name}={_short(value)} is invalid: {rule}")

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
        if self.tools is None:
            if tool_choice != "auto":
                raise bad("tool_choice", tool_choice, "it needs tools")
        else:
            _check_tool_choice(tool_choice, {_tool_function(t)["name"] for t in self.tools})
        # Key order is kept: property order in a schema is the order the grammar writes them.
        key = json.dumps(
            {
                "json_object": self.json_object,
                "json_schema": self.json_schema,
                "regex": self.regex,
                "choice": self.choice,
                "tools": self.tools,
                "tool_choice": tool_choice if self.tools is not None else None,
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


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain_json(name: str, value: Any) -> Any:
    """A deep copy made of plain JSON types; refuses what JSON cannot hold."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"structured output {name} is not plain JSON ({e}): pass dicts, lists, "
                                  "strings, finite numbers, booleans and None only") from None


def _tool_function(tool: dict) -> dict:
    return tool["function"] if "function" in tool else tool


def _check_tools(tools: tuple) -> None:
    if not tools:
        raise InvalidRequestError("structured output tools=() is invalid: give at least one tool, or leave tools unset")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"tools[{i}] is not a tool definition: pass "
                                      '{"type": "function", "function": {"name": ..., "parameters": {...}}}')
        if tool.get("type", "function") != "function":
            raise InvalidRequestError(f"tools[{i}] has type {tool.get('type')!r}: only \"function\" tools are supported")
        fn = _tool_function(tool)
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
            raise InvalidRequestError(f"tool {name!r}: parameters must be a JSON Schema object, got {_short(params)}")
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
    if not isinstance(tool_choice, dict) or tool_choice.get("type", "function") != "function" or not isinstance(name, str):
        raise InvalidRequestError(
            f"tool_choice={_short(tool_choice)} is invalid: name a tool as "
            '{"type": "function", "function": {"name": ...}}'
        )
    if name not in names:
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not among the tools ({', '.join(sorted(names))}): "
            "add its definition to tools or name another"
        )


def tool_parameters(tool: dict) -> dict:
    """The JSON Schema a call's arguments must satisfy (no parameters: an empty object)."""
    params = _tool_function(tool).get("parameters")
    if params is None:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    if "type" not in params:
        params = {"type": "object", **params}
    return params


# ---- tool-call text ------------------------------------------------------------------------------
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
        raise ValueError(f"the tool-call block is not complete JSON ({e}): the output was probably cut off "
                         "by max_tokens; raise it") from None
    if isinstance(items, dict):
        items = [items]
    calls: list[dict] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"tool call {_short(item)} has no name")
        args = item.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"tool call {item['name']!r} has arguments that are not JSON ({e})") from None
        calls.append({"name": item["name"], "arguments": args})
    return content, calls


# ---- grammars ------------------------------------------------------------------------------------
@dataclass
class CompiledGrammar:
    """A spec compiled for one tokenizer: the grammar text and a matcher in its start state that
    each request copies (building the lexer and parser is the expensive part).

    `json`: the output (or, with tools, the tool-call block) is JSON. `free_text_first`: tools
    under auto / none. `block_close_len`: tokens a tool-call block needs at least, from its tag
    (auto only; measured on first use)."""

    spec_key: str
    grammar: str
    template: llguidance.LLMatcher
    json: bool
    free_text_first: bool
    hints: list[list[int]] = field(default_factory=list)  # tokenized `spec_hints`
    block_close_len: int | None = None


# Budget: with this many tokens left (or twice the last closing estimate, plus this), a
# constrained sequence keeps a closing path; the estimate is refreshed every `_ESTIMATE_EVERY`.
_MIN_WINDOW = 16
_ESTIMATE_EVERY = 16
_ESTIMATE_CAP = 1024


class GrammarMatcher:
    """One sequence's position in its grammar, and how it will finish within its budget.

    Per step the engine calls `prepare` (write the allowed tokens into a bitmask row), samples,
    then `take` (advance by the token, which may replace it; see `grammar_closing`). Not
    thread-safe: the engine thread owns it. `num_accepted` counts tokens taken, so the engine can
    tell a matcher that missed tokens and `rebuild` it by replaying the output.
    """

    def __init__(self, compiler: GrammarCompiler, compiled: CompiledGrammar, matcher: llguidance.LLMatcher) -> None:
        self.compiler = compiler
        self.compiled = compiled
        self._matcher = matcher
        self.num_accepted = 0
        self.in_block = False  # a `<tool_calls>` block has started
        self.closed_by_budget = False  # the end was forced to fit max_tokens
        self._reset_budget()

    def _reset_budget(self) -> None:
        self._scan: ScanState | None = ScanState() if self.compiled.json and not self.compiled.free_text_first else None
        self._plan: list[int] | None = None  # a closing path from the current state
        self._forced: list[int] = []  # the path being followed, reversed
        self._window = _MIN_WINDOW

    @property
    def matcher(self) -> llguidance.LLMatcher:
        return self._matcher

    @property
    def constrained_now(self) -> bool:
        """Inside the grammar's structured part (not the free text before a tool-call block)."""
        return not self.compiled.free_text_first or self.in_block

    @property
    def forced_token(self) -> int | None:
        """The token this step must take (following a closing path), if any."""
        return self._forced[-1] if self._forced else None

    # ---- per step ----------------------------------------------------------------------------
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the grammar's allowed-next-token bits into `bitmask[row]` (`(batch, ceil(vocab/32))`
        int32, CPU)."""
        v = bitmask[row]
        self._matcher.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())

    def prepare(self, bitmask: torch.Tensor, row: int, remaining: int, filled: bool = False) -> None:
        """Write this step's allowed tokens into `bitmask[row]`: the grammar's (unless `filled`
        already), or the one token of a closing path being followed. `remaining`: tokens the
        sequence may still generate, this one included."""
        forced = self.forced_token
        if forced is not None:
            bitmask[row].zero_()
            _set_bit(bitmask, row, forced)
            return
        if not filled:
            self.fill_bitmask(bitmask, row)
        if self.constrained_now:
            if remaining > self._window:
                self._plan = None
                if self.num_accepted % _ESTIMATE_EVERY == 0:
                    path = self._rollout(self._matcher, self._scan, _ESTIMATE_CAP)
                    if path is not None:
                        self._window = max(self._window, 2 * len(path) + _MIN_WINDOW)
            elif self._plan is None:
                # No path yet (the window just opened), or none fitted: try again each step, as the
                # model's own tokens may bring the end within reach.
                self._plan = self._rollout(self._matcher, self._scan, remaining)
        else:
            self._guard_tag(bitmask, row, remaining)

    def take(self, token_id: int, remaining: int) -> int:
        """Advance by the sampled `token_id` and return the token actually taken: the sampled one,
        unless no closing path of the remaining budget would be left after it, in which case the
        sequence follows the closing path it had. Returns -1 if the grammar refused the token."""
        forced = self.forced_token
        if forced is not None:
            self._forced.pop()
            return token_id if self.accept(forced) and forced == token_id else -1
        scan = self._scan
        if not self.accept(token_id):
            return -1
        if not self.constrained_now or token_id in self.compiler.eos_token_ids or self._matcher.is_stopped():
            return token_id
        if self._plan is None and not (self.in_block and token_id == self.compiler.tag_start):
            return token_id
        # Most tokens (text inside a string, a digit) leave the old path valid: check it first,
        # which costs consumes, not masks.
        path = self._plan if self._plan and self._closes(self._plan, remaining - 1) else None
        if path is None:
            path = self._rollout(self._matcher, self._scan, remaining - 1)
        if path is not None:
            self._plan = path
            return token_id
        if self._plan is None:
            return token_id  # no path to fall back on: keep the model's token, look again next step
        # The sampled token leaves no way to finish in budget: take the path instead.
        self._matcher.rollback(1)
        self.num_accepted -= 1
        self._scan = scan
        plan, self._plan = self._plan, None
        self._forced = plan[::-1]
        self.closed_by_budget = True
        forced = self._forced.pop()
        return forced if self.accept(forced) else -1

    def accept(self, token_id: int) -> bool:
        """Advance by `token_id`; False (and the matcher is in error) when the grammar forbids it."""
        ok = self._matcher.consume_token(token_id)
        self.num_accepted += 1
        if token_id == self.compiler.tag_start and self.compiled.free_text_first:
            self.in_block = True
            if self.compiled.json:
                self._scan = ScanState()
        elif token_id == self.compiler.tag_start:
            self.in_block = True
        elif self._scan is not None:
            self._scan = self.compiler.token_table.advance(self._scan, token_id)
        return ok

    def rebuild(self, token_ids: Sequence[int]) -> bool:
        """Start over from the grammar's start and replay `token_ids` (after a lost state)."""
        self._matcher = self.compiled.template.deep_copy()
        self.num_accepted = 0
        self.in_block = False
        self._reset_budget()
        return all(self.accept(t) for t in token_ids)

    def is_accepting(self) -> bool:
        return self._matcher.is_accepting()

    def is_terminated(self) -> bool:
        """The grammar is complete: only end-of-sequence may follow (or it was taken)."""
        return self._matcher.is_stopped()

    def is_error(self) -> bool:
        return self._matcher.is_error()

    def error(self) -> str:
        return self._matcher.get_error()

    # ---- budget ------------------------------------------------------------------------------
    def _rollout(self, matcher: llguidance.LLMatcher, scan: ScanState | None, cap: int) -> list[int] | None:
        if cap <= 0:
            return None
        return rollout(
            matcher,
            scan,
            self.compiler.token_table,
            cap,
            seed=self.num_accepted,
            scratch=self.compiler.scratch(),
            hints=self.compiled.hints,
        )

    def _closes(self, path: list[int], cap: int) -> bool:
        """Whether `path` still takes the grammar from here to its end, within `cap` tokens."""
        if len(path) > cap:
            return False
        c = self._matcher.deep_copy()
        eos = path[-1] in self.compiler.eos_token_ids
        body = path[:-1] if eos else path
        if c.try_consume_tokens(body) != len(body):
            return False
        return c.is_accepting() if eos else c.is_stopped()

    def _guard_tag(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        """Free text before a tool-call block: forbid opening the block when too few tokens are
        left to close it (the text may still run to max_tokens; it is valid as it stands)."""
        tag = self.compiler.tag_start
        if tag is None or not _get_bit(bitmask, row, tag):
            return
        need = self.compiler.block_close_len(self.compiled)
        if need is None or remaining - 1 < 2 * need + 8:
            _clear_bit(bitmask, row, tag)


def _set_bit(bitmask: torch.Tensor, row: int, token: int) -> None:
    word = int(bitmask[row, token // 32]) | (1 << (token % 32))
    bitmask[row, token // 32] = word - (1 << 32) if word >= 1 << 31 else word


def _clear_bit(bitmask: torch.Tensor, row: int, token: int) -> None:
    word = (int(bitmask[row, token // 32]) & 0xFFFFFFFF) & ~(1 << (token % 32))
    bitmask[row, token // 32] = word - (1 << 32) if word >= 1 << 31 else word


def _get_bit(bitmask: torch.Tensor, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)


class GrammarCompiler:
    """Compiles `StructuredOutput` specs for one tokenizer and vocab, with an LRU cache.

    `check` and `matcher` may be called from any thread (the server checks a request's spec
    before queuing it; the engine thread makes matchers).

    Args:
        tokenizer: the engine's tokenizer. vocab_size: the model's (the mask's width; ids past the
            tokenizer's vocab are never allowed). eos_token_ids: the ids that end a sequence.
        cache_size: compiled specs kept.
    """

    def __init__(
        self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Iterable[int], cache_size: int = 256
    ) -> None:
        llg = _import_llguidance()
        tokenizer_json = _tokenizer_json(tokenizer)
        eos = sorted(set(eos_token_ids))
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos)
        self.tokenizer_key = hashlib.sha256(
            f"{tokenizer_json}\x00{vocab_size}\x00{eos}".encode()
        ).hexdigest()[:16]
        self.lltokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos)
        self.tag_start = tokenizer.token_to_id(TOOL_CALLS_START)
        self.tag_end = tokenizer.token_to_id(TOOL_CALLS_END)
        self._token_table: TokenTable | None = None
        self._scratch = threading.local()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._executor: llguidance.LLExecutor | None = None

    # ---- compile ---------------------------------------------------------------------------------
    def compile(self, spec: StructuredOutput) -> CompiledGrammar:
        """The compiled grammar of `spec`, from the cache or built now.

        Raises `InvalidRequestError` naming what the grammar cannot enforce (an unsupported JSON
        Schema keyword or format, a regex feature) or what is malformed."""
        key = (self.tokenizer_key, spec.key)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._build(spec)
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def check(self, spec: StructuredOutput) -> None:
        """Compile `spec` (cached) so a request that uses it cannot fail later; raises as `compile`."""
        self.compile(spec)

    def matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """A fresh matcher at the start of `spec`'s grammar; raises as `compile`."""
        compiled = self.compile(spec)
        with self._lock:
            m = compiled.template.deep_copy()
        return GrammarMatcher(self, compiled, m)

    @property
    def token_table(self) -> TokenTable:
        """Per-token JSON effects for closing paths (built on first use)."""
        with self._lock:
            if self._token_table is None:
                self._token_table = TokenTable(self.lltokenizer, self.vocab_size, self.eos_token_ids)
            return self._token_table

    def scratch(self) -> torch.Tensor:
        """A one-row bitmask buffer for rollouts (one per thread)."""
        buf = getattr(self._scratch, "buf", None)
        if buf is None:
            buf = self._scratch.buf = self.allocate_bitmask(1)
        return buf

    def block_close_len(self, compiled: CompiledGrammar) -> int | None:
        """Tokens a tool-call block of `compiled` takes at least, from its opening tag (measured
        once by a rollout); None if the tokenizer has no tag or no rollout closes it."""
        if compiled.block_close_len is None and self.tag_start is not None:
            m = compiled.template.deep_copy()
            if m.consume_token(self.tag_start):
                path = rollout(
                    m, ScanState() if compiled.json else None, self.token_table, _ESTIMATE_CAP, 0, self.scratch(),
                    compiled.hints,
                )
                compiled.block_close_len = None if path is None else len(path) + 1
        return compiled.block_close_len

    def _build(self, spec: StructuredOutput) -> CompiledGrammar:
        llg = _import_llguidance()
        what: str
        if spec.json_object:
            what, grammar = "json_object", llg.LLMatcher.grammar_from_json_schema(
                {"type": "object"}, defaults=JSON_OPTIONS
            )
        elif spec.json_schema is not None:
            _refuse_legacy(spec.json_schema, "json_schema")
            what, grammar = "json_schema", llg.LLMatcher.grammar_from_json_schema(
                strict_formats(spec.json_schema), defaults=JSON_OPTIONS
            )
        elif spec.regex is not None:
            what, grammar = "regex", llg.LLMatcher.grammar_from_regex(spec.regex)
        elif spec.choice is not None:
            lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice)
            what, grammar = "choice", llg.LLMatcher.grammar_from_lark(lark)
        else:
            assert spec.tools is not None
            for tool in spec.tools:
                _refuse_legacy(tool_parameters(tool), f"tool {_tool_function(tool)['name']!r} parameters")
                self._check_tool_schema(tool)
            what, grammar = "tools", llg.LLMatcher.grammar_from_lark(self._tools_lark(spec))
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise InvalidRequestError(_explain(what, messages[0] if messages else "unknown error"))
        template = llg.LLMatcher(self.lltokenizer, grammar, log_level=0)
        if template.is_error():
            raise InvalidRequestError(_explain(what, template.get_error()))
        hint_source = spec.regex if spec.regex is not None else (spec.json_schema or list(spec.tools or ()))
        hints = [self.lltokenizer.tokenize_str(h) for h in spec_hints(hint_source)]
        return CompiledGrammar(
            spec.key,
            grammar,
            template,
            json=what in ("json_object", "json_schema", "tools"),
            free_text_first=spec.free_text_first,
            hints=[h for h in hints if h],
        )

    def _check_tool_schema(self, tool: dict) -> None:
        # Checked alone first, so an error names the tool rather than a place in the combined grammar.
        llg = _import_llguidance()
        name = _tool_function(tool)["name"]
        grammar = llg.LLMatcher.grammar_from_json_schema(strict_formats(tool_parameters(tool)), defaults=JSON_OPTIONS)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise InvalidRequestError(_explain(f"tool {name!r} parameters", messages[0] if messages else "?"))

    def _tools_lark(self, spec: StructuredOutput) -> str:
        """Lark for Jamba's tool-call block, laid out as the chat template renders it:
        `<tool_calls>[\\n    {"name": "f", "arguments": {...}},\\n    ...\\n]</tool_calls>`."""
        assert spec.tools is not None
        choice = spec.tool_choice
        tools = list(spec.tools)
        if isinstance(choice, dict):
            tools = [t for t in tools if _tool_function(t)["name"] == choice["function"]["name"]]
        start, end = self._tag(self.tag_start, TOOL_CALLS_START), self._tag(self.tag_end, TOOL_CALLS_END)
        lines = ["%llguidance {}"]
        if choice == "none":
            lines.append("start: TEXT?")
        elif choice == "auto":
            lines.append("start: TEXT? block?")
        else:
            lines.append("start: block")
        lines.append(f'block: {start} "[\\n    " call (",\\n    " call)* "\\n]" {end}')
        lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
        for i, tool in enumerate(tools):
            name = _tool_function(tool)["name"]
            head = '{"name": ' + json.dumps(name) + ', "arguments": '
            params = {"x-guidance": JSON_OPTIONS, **strict_formats(tool_parameters(tool))}
            lines.append(f"call_{i}: {json.dumps(head)} args_{i} " + '"}"')
            lines.append(f"args_{i}: %json " + json.dumps(params, ensure_ascii=False))
        # Free text: any characters; special tokens are never text, so it cannot hold a tag.
        lines.append(r"TEXT: /(.|\n)+/")
        return "\n".join(lines) + "\n"

    def _tag(self, token_id: int | None, text: str) -> str:
        if token_id is not None and self.lltokenizer.is_special_token(token_id):
            return f"<[{token_id}]>"
        return json.dumps(text)  # a tokenizer without the special token: the tag is plain text

    # ---- masks -----------------------------------------------------------------------------------
    def allocate_bitmask(self, batch: int) -> torch.Tensor:
        """A `(batch, ceil(vocab/32))` int32 CPU bitmask, all tokens allowed."""
        return torch.full((batch, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def fill_bitmasks(self, rows: Sequence[tuple[GrammarMatcher, int, int]], bitmask: torch.Tensor) -> None:
        """Fill `bitmask[row]` for each `(matcher, row, remaining)` (`remaining`: tokens the
        sequence may still generate, this one included). The grammar masks of several rows are
        computed in parallel by llguidance's thread pool, outside the GIL; then each matcher
        adjusts its row for its budget (`GrammarMatcher.prepare`)."""
        free = [(m, row) for m, row, _ in rows if m.forced_token is None]
        if len(free) > 1:
            if self._executor is None:
                self._executor = _import_llguidance().LLExecutor()
            assert bitmask.is_contiguous() and bitmask.dtype == torch.int32
            self._executor.unsafe_compute_mask_ptr(
                [(m.matcher, row) for m, row in free], bitmask.data_ptr(), bitmask.shape[1] * 4, bitmask.shape[0]
            )
        for m, row, remaining in rows:
            m.prepare(bitmask, row, remaining, filled=len(free) > 1)


_SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`(batch, ceil(vocab/32))` int32 bits -> `(batch, vocab_size)` bool, True where allowed."""
    shifts = _SHIFTS.to(bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (batch, words, 32)
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """Set the logits of forbidden tokens to -inf, in place, for the rows `rows` of `logits
    (batch, vocab)`; `bitmask[i]` is the mask of `logits[rows[i]]`. Other rows are untouched."""
    if not rows:
        return
    allowed = unpack_bitmask(bitmask[: len(rows)].to(logits.device, non_blocking=True), logits.shape[-1])
    index = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


# ---- helpers -------------------------------------------------------------------------------------
def _import_llguidance():  # noqa: ANN202 - the module
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - a hard dependency; named for a broken install
        raise InvalidRequestError(
            "structured output needs the llguidance package: pip install 'llguidance>=1.9'"
        ) from e
    return llguidance


def _tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer's `tokenizer.json` text (llguidance reads the vocab and decoder from it)."""
    backend = getattr(tokenizer, "backend", None) or tokenizer._tok  # noqa: SLF001 - no public accessor yet
    return backend.to_str()


_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*)\]")


def _explain(what: str, message: str) -> str:
    m = _UNIMPLEMENTED.search(message)
    if m:
        keys = [k.strip().strip('"') for k in m.group(1).split(",") if k.strip()]
        listed = ", ".join(repr(k) for k in keys)
        word = "keyword" if len(keys) == 1 else "keywords"
        return (
            f"{what} uses the JSON Schema {word} {listed}, which constrained decoding cannot enforce: "
            "remove it (check it after generation instead) or express it with supported keywords"
        )
    if message.startswith("Unknown format"):
        fmt = message.split(":", 1)[-1].strip()
        return (
            f"{what} uses the string format {fmt!r}, which constrained decoding cannot enforce: use "
            "date-time, time, date, duration, email, hostname, ipv4, ipv6, uuid or uri, or a pattern"
        )
    if "min/maxProperties" in message:
        return (
            f"{what} uses the JSON Schema keyword 'minProperties' or 'maxProperties' on an object with "
            "optional properties, which constrained decoding cannot enforce: make every listed property "
            "required (bounds then apply to additionalProperties), or drop the bound"
        )
    if "oneOf" in message:
        return (
            f"{what} uses the JSON Schema keyword 'oneOf' with alternatives that may overlap, which "
            "constrained decoding cannot enforce: use anyOf, or make the alternatives disjoint "
            "(e.g. different types or a distinguishing const)"
        )
    first = message.strip().splitlines()
    detail = " ".join(line.strip() for line in first[:6])
    return f"{what} cannot be enforced by constrained decoding: {detail}"


# Formats narrowed to what common validators accept. RFC 3339 dates and times as Python's
# rfc3339-validator and `datetime` take them: years 0001-9999, no February 29 (valid only in leap
# years), no leap second (:60); llguidance's own formats allow all three. Host names with labels
# of at most 63 characters and 253 in all (RFC 1123, the `fqdn` package); llguidance's does not
# bound labels.
_DATE = (
    r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-"
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FORMAT_PATTERNS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "hostname": rf"^(?:{_LABEL}\.)*{_LABEL}$",
}
_FORMAT_MAX_LENGTH = {"hostname": 253}


def strict_formats(schema: Any) -> Any:
    """A copy of `schema` whose date, time, date-time and hostname formats are patterns that
    common validators accept (see `_FORMAT_PATTERNS`); other formats are left to llguidance."""
    if not isinstance(schema, dict):
        return schema
    schema = json.loads(json.dumps(schema))
    for _, node in _walk(schema, "#"):
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt in _FORMAT_PATTERNS:
            del node["format"]
            if "pattern" in node:
                node["allOf"] = [*node.get("allOf", []), {"pattern": _FORMAT_PATTERNS[fmt]}]
            else:
                node["pattern"] = _FORMAT_PATTERNS[fmt]
            if fmt in _FORMAT_MAX_LENGTH:
                limit = _FORMAT_MAX_LENGTH[fmt]
                node["maxLength"] = min(node.get("maxLength", limit), limit)
    return schema


def _refuse_legacy(schema: Any, what: str) -> None:
    """Refuse Draft-4/7 forms whose old meaning the grammar would not apply."""
    for path, node in _walk(schema, "#"):
        if isinstance(node.get("items"), list):
            raise InvalidRequestError(
                f"{what} uses the JSON Schema keyword 'items' as a list at {path}, which constrained "
                f"decoding cannot enforce: {_LEGACY_FORMS}, 'prefixItems'"
            )
        if "additionalItems" in node:
            raise InvalidRequestError(
                f"{what} uses the JSON Schema keyword 'additionalItems' at {path}, which constrained "
                f"decoding cannot enforce: {_LEGACY_FORMS}, 'prefixItems' with 'items'"
            )
        for k in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(node.get(k), bool):
                raise InvalidRequestError(
                    f"{what} uses the JSON Schema keyword {k!r} as a boolean at {path}, which constrained "
                    f"decoding cannot enforce: {_LEGACY_FORMS}, a number"
                )


_SCHEMA_VALUED = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames",
                  "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def _walk(node: Any, path: str) -> Iterable[tuple[str, dict]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for k in _SCHEMA_VALUED:
        if isinstance(node.get(k), dict):
            yield from _walk(node[k], f"{path}/{k}")
    for k in _SCHEMA_MAPS:
        if isinstance(node.get(k), dict):
            for name, sub in node[k].items():
                yield from _walk(sub, f"{path}/{k}/{name}")
    for k in _SCHEMA_LISTS:
        if isinstance(node.get(k), list):
            for i, sub in enumerate(node[k]):
                yield from _walk(sub, f"{path}/{k}/{i}")


__all__ = [
    "StructuredOutput",
    "GrammarCompiler",
    "GrammarMatcher",
    "CompiledGrammar",
    "apply_token_bitmask",
    "parse_tool_calls",
    "unpack_bitmask",
    "tool_parameters",
]
