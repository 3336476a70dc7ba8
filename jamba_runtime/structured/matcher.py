"""One sequence's grammar state: the tokens it may take next, and how it finishes within its budget.

A `GrammarMatcher` wraps the sequence's llguidance matcher. Far from the end of its budget it only
writes the grammar's mask; near the end it keeps a closing path (`closing.rollout`) and
replaces a sampled token that would leave no way to finish within `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from jamba_runtime.structured.closing import ScanState, TokenTable, rollout
from jamba_runtime.structured.masks import clear_bit, get_bit, set_bit
from jamba_runtime.structured.unique import UniqueTokens, UniqueTracker
from jamba_runtime.structured.unique_spec import UniqueSpec

if TYPE_CHECKING:
    import llguidance

# Budget: with this many tokens left (or twice the last closing estimate, plus this), a
# constrained sequence keeps a closing path; the estimate is refreshed every `_ESTIMATE_EVERY`
# tokens once the end nears.
_MIN_WINDOW = 16
_ESTIMATE_EVERY = 16
ESTIMATE_CAP = 1024  # the longest closing path an estimate looks for


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
    hint_chars: frozenset[int] = frozenset()  # the bytes of the hints
    block_close_len: int | None = None
    unique: UniqueSpec | None = None  # arrays whose items must differ (`unique.py`)
    # the length of the closing path from the start state (`GrammarMatcher._estimate` at the
    # first token; None: none found); set by the compiler
    start_path_len: int | None = None


class Compiler(Protocol):
    """What a matcher reads of the compiler that made it (`GrammarCompiler`): the tokenizer's
    tables, a scratch mask, and how long a tool-call block needs to close."""

    eos_token_ids: tuple[int, ...]
    tag_start: int | None

    @property
    def token_table(self) -> TokenTable: ...

    @property
    def unique_tokens(self) -> UniqueTokens: ...

    def scratch(self) -> torch.Tensor: ...

    def block_close_len(self, compiled: CompiledGrammar) -> int | None: ...


class GrammarMatcher:
    """One sequence's position in its grammar, and how it will finish within its budget.

    Per step the engine calls `prepare` (write the allowed tokens into a bitmask row), samples,
    then `take` (advance by the token, which may replace it; see `closing.py`). Not
    thread-safe: the engine thread owns it. `num_accepted` counts tokens taken, so the engine can
    tell a matcher that missed tokens and `rebuild` it by replaying the output.
    """

    def __init__(
        self,
        compiler: Compiler,
        compiled: CompiledGrammar,
        matcher: llguidance.LLMatcher,
        stagger: int = 0,
    ) -> None:
        self.compiler = compiler
        self.compiled = compiled
        self._matcher = matcher
        self.num_accepted = 0
        self.in_block = False  # a `<tool_calls>` block has started
        self.closed_by_budget = False  # the end was forced to fit max_tokens
        # From the request, never from a global counter: the estimate's timing decides when the
        # closing path starts, so it must not depend on what else ran (same seed, same output).
        self._offset = stagger % _ESTIMATE_EVERY
        self._unique_failed = False
        self._reset_budget()

    def _reset_budget(self) -> None:
        self._scan: ScanState | None = (
            ScanState() if self.compiled.json and not self.compiled.free_text_first else None
        )
        self._plan: list[int] | None = None  # a closing path from the current state
        self._forced: list[int] = []  # the path being followed, reversed
        self._window = _MIN_WINDOW
        unique = self.compiled.unique
        self._unique = UniqueTracker(unique, self.compiler.unique_tokens) if unique is not None else None

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

    def may_replace(self) -> bool:
        """Whether `take` may return another token than the one sampled this step: only while a
        closing path is planned near `max_tokens` and not yet followed. Otherwise the sampled token
        is the one taken (or the request ends), so the next step may run before it is read."""
        return self._plan is not None and not self._forced

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
            set_bit(bitmask, row, forced)
            return
        if not filled:
            self.fill_bitmask(bitmask, row)
        if self._unique is not None and not self._unique.restrict(bitmask, row, self._matcher):
            self._unique_failed = True  # every way on repeats an item: the engine ends the request
        if self.constrained_now:
            if remaining > self._window:
                self._plan = None
                self._estimate(remaining)
            elif self._plan is None:
                # No path yet (the window just opened), or none fitted: try again each step, as the
                # model's own tokens may bring the end within reach.
                self._plan = self._rollout(self._matcher, self._scan, remaining)
            if self._plan is not None and len(self._plan) >= remaining:
                # The path takes every token left: follow it now. Any other token would need a
                # shorter path after it, which the rollout after sampling (serial, between the
                # GPU's steps) seldom finds.
                self._follow_plan()
                bitmask[row].zero_()
                set_bit(bitmask, row, self._forced[-1])
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
        unique = self._unique.clone() if self._unique is not None and self._plan is not None else None
        if not self.accept(token_id):
            return -1
        if not self.constrained_now or token_id in self.compiler.eos_token_ids or self._matcher.is_stopped():
            return token_id
        if self._plan is None and not (self.in_block and token_id == self.compiler.tag_start):
            return token_id
        # The path's first token leaves its tail, which closes by construction. Most other tokens
        # leave the old path valid (text inside a string, a digit), or its tail (a token of the
        # same text): check those first, which costs consumes, not masks.
        plan = self._plan
        path = None
        if plan and len(plan) > 1 and token_id == plan[0]:
            path = plan[1:]
        else:
            for tail in (plan, plan[1:]) if plan else ():
                if tail and self._closes(tail, remaining - 1):
                    path = tail
                    break
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
        if unique is not None:
            self._unique = unique
        self._follow_plan()
        forced = self._forced.pop()
        return forced if self.accept(forced) else -1

    def _follow_plan(self) -> None:
        """From here on, take the closing path's tokens, whatever is sampled."""
        assert self._plan is not None
        plan, self._plan = self._plan, None
        self._forced = plan[::-1]
        self.closed_by_budget = True

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
        if self._unique is not None:
            self._unique.feed(token_id)
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
        return self._unique_failed or self._matcher.is_error()

    def error(self) -> str:
        if self._unique_failed:
            return "uniqueItems: every way to go on would repeat an item of a unique array"
        return self._matcher.get_error()

    # ---- budget ------------------------------------------------------------------------------
    def _rollout(
        self, matcher: llguidance.LLMatcher, scan: ScanState | None, cap: int, stop: int | None = None
    ) -> list[int] | None:
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
            hint_chars=self.compiled.hint_chars,
            unique=self._unique,
            stop=stop,
        )

    def _estimate(self, remaining: int) -> None:
        """Size the window from a closing path's length: at the first token, then every
        `_ESTIMATE_EVERY` tokens once the end nears (offset per matcher, so a batch that started
        together does not estimate all in one step). A path longer than `remaining` counts as
        none: it could not be followed anyway, and a rollout that cannot close (a number the
        grammar keeps open) stops there rather than at `ESTIMATE_CAP`."""
        if not self.num_accepted:
            # from the grammar's start: the same rollout for every request of this spec, done once
            length = self.compiled.start_path_len
            if length is None or length > remaining:
                return
        elif (
            remaining > 4 * self._window + 4 * _MIN_WINDOW
            or (self.num_accepted + self._offset) % _ESTIMATE_EVERY
        ):
            return
        else:
            path = self._rollout(self._matcher, self._scan, ESTIMATE_CAP, stop=remaining)
            if path is None:
                return
            length = len(path)
        self._window = max(self._window, 2 * length + _MIN_WINDOW)

    def _closes(self, path: list[int], cap: int) -> bool:
        """Whether `path` still takes the grammar from here to its end, within `cap` tokens."""
        if len(path) > cap:
            return False
        if self._unique is not None and not self._unique.accepts(path):
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
        if tag is None or not get_bit(bitmask, row, tag):
            return
        need = self.compiler.block_close_len(self.compiled)
        if need is None or remaining - 1 < 2 * need + 8:
            clear_bit(bitmask, row, tag)
