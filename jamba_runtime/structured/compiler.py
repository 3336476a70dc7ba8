"""Compiling structured-output specs to llguidance grammars for one tokenizer, and filling masks.

`GrammarCompiler.compile` turns a `StructuredOutput` into a `CompiledGrammar` (once per spec: an LRU
cache keyed by the spec's JSON and the tokenizer); `matcher` gives each sequence its own
`GrammarMatcher` from it; `fill_grammar_masks` writes the grammars' masks of a step's rows. JSON
Schemas pass through `json_schema` (legacy forms refused, formats and numbers narrowed) on
the way in.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.structured.closing import ScanState, TokenTable, rollout
from jamba_runtime.structured.hints import spec_hints
from jamba_runtime.structured.json_schema import (
    JSON_OBJECT_SCHEMA,
    JSON_OPTIONS,
    explain_grammar_error,
    narrow_schema,
    refuse_legacy,
    refuse_unrepresentable,
)
from jamba_runtime.structured.masks import allocate_bitmask
from jamba_runtime.structured.matcher import ESTIMATE_CAP, CompiledGrammar, GrammarMatcher
from jamba_runtime.structured.spec import tool_function
from jamba_runtime.structured.tools import TOOL_CALLS_END, TOOL_CALLS_START, tool_parameters, tools_lark
from jamba_runtime.structured.unique import UniqueTokens, UniqueTracker
from jamba_runtime.structured.unique_spec import UniqueSpec

if TYPE_CHECKING:
    import llguidance

    from jamba_runtime.structured.spec import StructuredOutput
    from jamba_runtime.tokenizer.tokenizer import Tokenizer


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
        self._unique_tokens: UniqueTokens | None = None
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
        try:
            compiled = self._build(spec)
        except (ValueError, TypeError, OverflowError) as e:
            # llguidance refusing a value it cannot read (the checks above name the common ones)
            raise InvalidRequestError(
                f"the output constraint cannot be compiled for constrained decoding ({e}): simplify it"
            ) from None
        self.token_table  # noqa: B018 - built here (~1 s for a 65k vocab), on the caller's thread, not mid-step
        if compiled.unique is not None:
            self.unique_tokens  # noqa: B018 - the same
        if not compiled.free_text_first:
            # every request of this spec estimates its closing path from the start at its first
            # token: one rollout here, on the caller's thread, rather than one per request mid-step
            compiled.start_path_len = self._start_path_len(compiled)
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def check(self, spec: StructuredOutput) -> None:
        """Compile `spec` (cached) so a request that uses it cannot fail later; raises as `compile`."""
        self.compile(spec)

    def matcher(self, spec: StructuredOutput, stagger: int = 0) -> GrammarMatcher:
        """A fresh matcher at the start of `spec`'s grammar; raises as `compile`. `stagger` (any
        int derived from the request, e.g. from its prompt) spreads the matchers' closing-path
        estimates over steps, so a batch that started together does not estimate all at once."""
        compiled = self.compile(spec)
        with self._lock:
            m = compiled.template.deep_copy()
        return GrammarMatcher(self, compiled, m, stagger)

    @property
    def token_table(self) -> TokenTable:
        """Per-token JSON effects for closing paths (built on first use)."""
        with self._lock:
            if self._token_table is None:
                self._token_table = TokenTable(self.lltokenizer, self.vocab_size, self.eos_token_ids)
            return self._token_table

    @property
    def unique_tokens(self) -> UniqueTokens:
        """Per-token bytes for `uniqueItems` (built on first use)."""
        with self._lock:
            if self._unique_tokens is None:
                self._unique_tokens = UniqueTokens(self.lltokenizer, self.vocab_size)
            return self._unique_tokens

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
                    m,
                    ScanState() if compiled.json else None,
                    self.token_table,
                    ESTIMATE_CAP,
                    0,
                    self.scratch(),
                    compiled.hints,
                    compiled.hint_chars,
                )
                compiled.block_close_len = None if path is None else len(path) + 1
        return compiled.block_close_len

    def _start_path_len(self, compiled: CompiledGrammar) -> int | None:
        """The length of the closing path a matcher of `compiled` finds at its start (what
        `GrammarMatcher._estimate` would roll out at the first token), or None."""
        with self._lock:
            m = compiled.template.deep_copy()
        unique = UniqueTracker(compiled.unique, self.unique_tokens) if compiled.unique is not None else None
        path = rollout(
            m,
            ScanState() if compiled.json else None,
            self.token_table,
            ESTIMATE_CAP,
            0,
            self.scratch(),
            compiled.hints,
            compiled.hint_chars,
            unique=unique,
        )
        return None if path is None else len(path)

    def _build(self, spec: StructuredOutput) -> CompiledGrammar:
        llg = _import_llguidance()
        what: str
        unique = None
        if spec.json_object:
            what, grammar = (
                "json_object",
                llg.LLMatcher.grammar_from_json_schema(JSON_OBJECT_SCHEMA, defaults=JSON_OPTIONS),
            )
        elif spec.json_schema is not None:
            refuse_legacy(spec.json_schema, "json_schema")
            refuse_unrepresentable(spec.json_schema, "json_schema")
            unique = UniqueSpec.of(spec.json_schema, "json_schema")
            what, grammar = (
                "json_schema",
                llg.LLMatcher.grammar_from_json_schema(
                    narrow_schema(spec.json_schema), defaults=JSON_OPTIONS
                ),
            )
        elif spec.regex is not None:
            # \d, \w and \s as ASCII: a subset of what both Rust's Unicode classes and Python's
            # `re` match, so `re.fullmatch` agrees (Rust's \d also takes digits Python's lacks).
            what, grammar = (
                "regex",
                llg.LLMatcher.grammar_from_lark("start: /" + llg.regex_to_lark(spec.regex, "dws") + "/"),
            )
        elif spec.choice is not None:
            lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice)
            what, grammar = "choice", llg.LLMatcher.grammar_from_lark(lark)
        else:
            assert spec.tools is not None
            for tool in spec.tools:
                what = f"tool {tool_function(tool)['name']!r} parameters"
                refuse_legacy(tool_parameters(tool), what)
                refuse_unrepresentable(tool_parameters(tool), what)
                if UniqueSpec.of(tool_parameters(tool), what) is not None:
                    raise InvalidRequestError(
                        f"{what} has 'uniqueItems': true, which constrained decoding enforces in a JSON schema "
                        "output (response_format, structured_outputs) but not in tool arguments: drop it, or "
                        "check the arguments after the call"
                    )
                self._check_tool_schema(tool)
            start = self._tag(self.tag_start, TOOL_CALLS_START)
            end = self._tag(self.tag_end, TOOL_CALLS_END)
            what, grammar = "tools", llg.LLMatcher.grammar_from_lark(tools_lark(spec, start, end))
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise InvalidRequestError(
                explain_grammar_error(what, messages[0] if messages else "unknown error")
            )
        template = llg.LLMatcher(self.lltokenizer, grammar, log_level=0)
        if template.is_error():
            raise InvalidRequestError(explain_grammar_error(what, template.get_error()))
        hint_source = spec.regex if spec.regex is not None else (spec.json_schema or list(spec.tools or ()))
        hint_texts = spec_hints(hint_source)
        hints = [self.lltokenizer.tokenize_str(h) for h in hint_texts]
        return CompiledGrammar(
            spec.key,
            grammar,
            template,
            json=what in ("json_object", "json_schema", "tools"),
            free_text_first=spec.free_text_first,
            hints=[h for h in hints if h],
            hint_chars=frozenset(b for h in hint_texts for b in h.encode()),
            unique=unique,
        )

    def _check_tool_schema(self, tool: dict) -> None:
        # Checked alone first, so an error names the tool rather than a place in the combined grammar.
        llg = _import_llguidance()
        name = tool_function(tool)["name"]
        grammar = llg.LLMatcher.grammar_from_json_schema(
            narrow_schema(tool_parameters(tool)), defaults=JSON_OPTIONS
        )
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise InvalidRequestError(
                explain_grammar_error(f"tool {name!r} parameters", messages[0] if messages else "?")
            )

    def _tag(self, token_id: int | None, text: str) -> str:
        if token_id is not None and self.lltokenizer.is_special_token(token_id):
            return f"<[{token_id}]>"
        return json.dumps(text)  # a tokenizer without the special token: the tag is plain text

    # ---- masks -----------------------------------------------------------------------------------
    def allocate_bitmask(self, batch: int) -> torch.Tensor:
        """A `(batch, ceil(vocab/32))` int32 CPU bitmask, all tokens allowed (`masks.allocate_bitmask`)."""
        return allocate_bitmask(batch, self.vocab_size)

    def fill_grammar_masks(self, rows: Sequence[tuple[GrammarMatcher, int]], bitmask: torch.Tensor) -> None:
        """The grammars' own masks (no budget logic) into `bitmask[row]` for each `(matcher, row)`:
        several rows in parallel on llguidance's thread pool, outside the GIL."""
        if len(rows) == 1:
            m, row = rows[0]
            m.fill_bitmask(bitmask, row)
        elif rows:
            if self._executor is None:
                self._executor = _import_llguidance().LLExecutor()
            assert bitmask.is_contiguous() and bitmask.dtype == torch.int32
            self._executor.unsafe_compute_mask_ptr(
                [(m.matcher, row) for m, row in rows],
                bitmask.data_ptr(),
                bitmask.shape[1] * 4,
                bitmask.shape[0],
            )


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
