"""Closing paths: how a structured output finishes within its token budget.

A grammar mask alone does not stop `max_tokens` (or the context limit) from cutting a JSON object
in half. So near the end of its budget a constrained sequence keeps a *closing path*: a short token
sequence that takes its grammar from the current state to the end, found by a greedy rollout on a
copy of the matcher. The model's token is kept only while a closing path within the remaining
budget still exists after it; otherwise the sequence follows the path it had, and ends complete.

The rollout is JSON-aware. Each token's effect on the string state (outside a string / inside /
right after a backslash), the bracket depth and an unfinished number is computed once per
tokenizer (`TokenTable`); the rollout takes an allowed token that leaves the fewest things open,
preferring ASCII tokens that move on in the structure, breaking ties at random from a fixed seed. Inside a string that
cannot end yet (a `pattern` or `format`), it first tries to type a *hint*: a short string that
satisfies one of the spec's patterns or formats (`hints.spec_hints`). Whether a path reaches the
end is checked by the matcher, never assumed: the heuristics only choose which path.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import llguidance
    import torch

    from jamba_runtime.structured.unique import UniqueTracker

_OUT, _STR, _ESC = 0, 1, 2  # outside a string, inside one, inside one right after a backslash
_NEUTRAL = 3  # ordering for non-JSON grammars (regex, choice): length and ASCII only


@dataclass
class ScanState:
    """Where a JSON text stands: string state, open brackets, an unfinished number."""

    mode: int = _OUT
    depth: int = 0
    incomplete: bool = False  # a number or literal under way, or a "," / ":" waiting for what follows


_CLEAR, _SET, _KEEP = 0, 1, 2  # what a token does to `ScanState.incomplete`


class TokenTable:
    """Per-token JSON effects for one tokenizer, and the token order rollouts choose by (built
    once per tokenizer: ~1 s for a 65k vocab).

    A token's effect, per start mode (outside a string, in one, after a backslash): the end mode,
    the change of bracket depth, and whether it leaves something pending (a number or literal under
    way, or a `,` or `:` that must be followed; whitespace keeps what was pending). Per start state
    (mode, pending), tokens are grouped into levels by how many things are open after them
    (string, escape, pending, net brackets); within a level, tokens that move on in the
    structure (end a string, close a bracket) come first, then ASCII, then by length (`_order`).
    One more order (ASCII, longest) serves grammars that are not JSON.
    """

    def __init__(
        self, lltokenizer: llguidance.LLTokenizer, vocab_size: int, eos_token_ids: Iterable[int]
    ) -> None:
        n = min(vocab_size, lltokenizer.vocab_size)
        self.vocab_size = vocab_size
        self.end_mode = [[s] * vocab_size for s in range(3)]
        self.delta = [[0] * vocab_size for _ in range(3)]
        self.pending = [[_KEEP] * vocab_size for _ in range(3)]
        structural = np.ones((3, vocab_size), dtype=np.int64)
        usable = np.zeros(vocab_size, dtype=bool)
        non_ascii = np.ones(vocab_size, dtype=np.int64)
        length = np.ones(vocab_size, dtype=np.int64)
        for i in range(n):
            if lltokenizer.is_special_token(i):
                # Neutral: a grammar allows a special token only where it must come (a tag).
                usable[i] = True
                continue
            b = lltokenizer.decode_bytes([i])
            if not b:
                continue
            usable[i] = True
            length[i] = len(b)
            non_ascii[i] = 0 if all(0x20 <= c < 0x7F for c in b) else 1
            for s in range(3):
                mode, d, moves, pending = s, 0, False, _KEEP
                for c in b:
                    if mode == _ESC:
                        mode = _STR
                    elif mode == _STR:
                        if c == 0x5C:  # backslash
                            mode = _ESC
                        elif c == 0x22:
                            mode, moves, pending = _OUT, True, _CLEAR
                    elif c == 0x22:
                        mode, pending = _STR, _CLEAR
                    elif c in b"{[":
                        d, pending = d + 1, _CLEAR
                    elif c in b"}]":
                        d, moves, pending = d - 1, True, _CLEAR
                    elif c in b",:":
                        moves, pending = True, _SET
                    elif c not in b" \t\n\r":
                        # A number or literal under way: it stays open until a separator or a
                        # bracket follows, so extending it is never progress.
                        pending = _SET
                self.end_mode[s][i] = mode
                self.delta[s][i] = d
                self.pending[s][i] = pending
                structural[s, i] = 0 if moves else 1
        ids = np.flatnonzero(usable)
        self._orders: dict[tuple[int, bool] | int, _Order] = {}
        for s in range(3):
            em = np.asarray(self.end_mode[s])
            pend = np.asarray(self.pending[s])
            for was_pending in (False, True):
                after = (pend == _SET) | ((pend == _KEEP) & was_pending)
                opened = np.asarray(self.delta[s]) + (em != _OUT) + (em == _ESC) + after
                self._orders[(s, was_pending)] = _Order(
                    *_order(ids, opened, structural[s], non_ascii, length)
                )
        zeros = np.zeros(vocab_size, dtype=np.int64)
        self._orders[_NEUTRAL] = _Order(*_order(ids, zeros, zeros, non_ascii, length))
        self.eos = np.asarray(sorted(set(eos_token_ids)), dtype=np.int64)
        self.eos_set = frozenset(int(e) for e in self.eos)
        self.eos_list = [int(e) for e in self.eos]
        # per start mode in a string: the tokens that end it
        self.closes_string = [ids[np.asarray(self.end_mode[s])[ids] == _OUT] for s in range(3)]
        # one token per printable ASCII character, for `_search_chars`: (byte, token id)
        singles: dict[int, int] = {}
        for i in ids[length[ids] == 1]:
            i = int(i)
            if not lltokenizer.is_special_token(i) and i < n:
                b = lltokenizer.decode_bytes([i])
                if len(b) == 1 and 0x20 <= b[0] < 0x7F and b[0] != 0x22 and b[0] != 0x5C:
                    singles.setdefault(b[0], i)
        self.single_chars = sorted(singles.items())
        # the token that is a bare `"`: whether it is allowed says whether a string can end here
        self.quote: int | None = next(
            (
                int(i)
                for i in ids[length[ids] == 1]
                if i < n
                and not lltokenizer.is_special_token(int(i))
                and lltokenizer.decode_bytes([int(i)]) == b'"'
            ),
            None,
        )
        self.single_char_ids = np.asarray([t for _, t in self.single_chars], dtype=np.int64)

    def advance(self, state: ScanState, token_id: int) -> ScanState:
        s = state.mode
        if token_id >= self.vocab_size:
            return state
        p = self.pending[s][token_id]
        return ScanState(
            self.end_mode[s][token_id],
            state.depth + self.delta[s][token_id],
            state.incomplete if p == _KEEP else p == _SET,
        )

    def choose(self, words: np.ndarray, state: ScanState | None, rng: random.Random) -> int | None:
        """The rollout's next token among those allowed by the bitmask `words` (`(ceil(vocab/32),)`
        uint32, token i is bit i % 32 of word i // 32); None when none is. `state` None: the
        grammar is not JSON, so only length and ASCII count.

        The first allowed end-of-sequence token if any; else the first tier of the state's order
        (`_order`) that holds an allowed token, and one of its allowed tokens at random. A mask of
        many allowed tokens (text in a string) is read first at the head of the order, where its
        first allowed tier nearly always is; a mask of few (a key, punctuation), bit by bit."""
        for e in self.eos_list:
            if words[e >> 5] >> (e & 31) & 1:
                return e
        o = self._orders[_NEUTRAL if state is None else (state.mode, state.incomplete)]
        nonzero = np.flatnonzero(words)
        if nonzero.size <= _FEW_WORDS:
            # plain Python beats numpy's per-call overhead on a few words
            ranks = []
            for w in nonzero.tolist():
                bits = int(words[w])
                while bits:
                    low = bits & -bits
                    t = w * 32 + low.bit_length() - 1
                    if t < o.rank_size:
                        ranks.append(o.rank_list[t])
                    bits ^= low
            first = min(ranks, default=o.size)
            if first >= o.size:
                return None
            end = o.tier_end_list[first]
            cands = sorted(r for r in ranks if r < end)
            return o.ids_list[cands[rng.randrange(len(cands))]]
        # more: the head of the order first where many are allowed (text in a string), then the
        # whole order
        ok = allowed_bits(words, o.head) if nonzero.size > _DENSE_WORDS else o.head[:0]
        if not ok.any():
            ok = np.unpackbits(words.view(np.uint8), bitorder="little")[o.ids]
        first = int(ok.argmax())
        if not ok[first]:
            return None
        tier = o.ids[first : int(o.tier_end[first])]
        cands = tier[allowed_bits(words, tier).astype(bool)]
        return int(cands[rng.randrange(cands.size)])


_FEW_WORDS = 8  # a mask with at most this many nonzero words is read bit by bit in Python
_DENSE_WORDS = 1536  # more nonzero words than this (text in a string): the order's head first
_HEAD = 512  # how many tokens that head holds


def allowed_bits(words: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The bits of tokens `ids` (int64) in the bitmask `words` (uint32), as 0 / 1 (int64)."""
    return (words[ids >> 5].astype(np.int64) >> (ids & 31)) & 1


class _Order:
    """The token ids in the order a rollout tries them (`ids`), the end of each position's tier
    (`tier_end`), its head (the first `_HEAD` ids), and as lists for `choose`'s few-tokens path:
    the same two and each token's position (`rank`; `size` for a token the order leaves out)."""

    def __init__(self, ids: np.ndarray, tier_end: np.ndarray) -> None:
        self.ids, self.tier_end, self.head = ids, tier_end, ids[:_HEAD]
        self.size = int(ids.size)
        rank = np.full(int(ids.max(initial=-1)) + 1, ids.size, dtype=np.int64)
        rank[ids] = np.arange(ids.size)
        self.rank_list: list[int] = rank.tolist()
        self.rank_size = len(self.rank_list)
        self.tier_end_list: list[int] = tier_end.tolist()
        self.ids_list: list[int] = ids.tolist()


def _order(
    ids: np.ndarray, opened: np.ndarray, structural: np.ndarray, non_ascii: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The usable token ids in the order a rollout tries them, and for each position the end of
    its tier (tokens equally good, chosen among at random). Order: by `opened`, then structural
    (those that move on first; `structural` is 0 for them), ASCII, then the shortest of those that
    move on (a bare `"` ends a string without adding text) and the longest of the others (the
    budget counts tokens, not bytes: a forced key in one token rather than char by char)."""
    size = np.where(structural[ids] == 0, length[ids], -length[ids])
    keys = np.stack([opened[ids], structural[ids], non_ascii[ids], size])
    order = np.lexsort(keys[::-1])
    keys = keys[:, order]
    change = np.flatnonzero((keys[:, 1:] != keys[:, :-1]).any(axis=0)) + 1
    bounds = np.append(change, len(order))
    tier_end = np.repeat(bounds, np.diff(np.concatenate([[0], bounds])))
    return ids[order], tier_end


def rollout(
    matcher: llguidance.LLMatcher,
    state: ScanState | None,
    table: TokenTable,
    cap: int,
    seed: int,
    scratch: torch.Tensor,
    hints: list[list[int]] = (),  # type: ignore[assignment]
    hint_chars: frozenset[int] = frozenset(),
    unique: UniqueTracker | None = None,
    stop: int | None = None,
) -> list[int] | None:
    """A token path of at most `cap` tokens from `matcher`'s state (on a copy) to the grammar's
    end: it ends with an end-of-sequence token, or where the grammar stops. None if none is found.
    `stop`: give up once the path is longer than this; what it returns is then what the rollout
    without `stop` returns, if that is at most `stop` tokens long, else None (the choices are
    those of a `cap`-token budget either way).

    `scratch`: a `(1, ceil(vocab/32))` int32 CPU buffer for the masks. Where a string cannot end
    yet (or, not JSON, the output), the rollout first tries to type one of `hints` (`hints.spec_hints`,
    tokenized), then searches short strings of single characters (`_search_chars`; `hint_chars`,
    the bytes of the hints, are tried first when many characters are allowed). `unique`: the
    sequence's `uniqueItems` tracker; the path never closes an item equal to an earlier one."""
    m = matcher.deep_copy()
    unique = unique.clone() if unique is not None else None
    rng = random.Random(seed)
    words = scratch.numpy()[0].view(np.uint32)  # a view: sees each mask written into `scratch`
    path: list[int] = []
    search_again = 0  # a failed search is not repeated at every step
    limit = cap if stop is None else min(cap, stop)
    while len(path) < limit:
        if m.is_stopped():
            return path
        m.unsafe_compute_mask_ptr(scratch.data_ptr(), scratch.numel() * 4)
        if m.is_error():
            return None
        if unique is not None and not unique.restrict(scratch, 0, m):
            return None
        token = table.choose(words, state, rng)
        if token is None:
            return None
        if _stuck(table, state, token) and len(path) >= search_again:
            room = cap - len(path)
            typed = _type_hint(m, table, state, hints, room) if hints else None
            if typed is None:
                typed = _search_chars(m, table, state, hint_chars, room)
            if typed is not None:
                for t in typed:
                    state = table.advance(state, t) if state is not None else None
                    if unique is not None and not unique.feed(t):
                        return None
                path.extend(typed)
                continue
            search_again = len(path) + 4
        path.append(token)
        if token in table.eos_set:
            return path
        if not m.consume_token(token):
            return None
        if state is not None:
            state = table.advance(state, token)
        if unique is not None:
            unique.feed(token)
    return path if m.is_stopped() and len(path) <= limit else None


def _stuck(table: TokenTable, state: ScanState | None, token: int) -> bool:
    """The best token keeps a string open (or, not JSON, does not end the output)."""
    if state is None:
        return True
    return state.mode != _OUT and table.end_mode[state.mode][token] != _OUT


def _type_hint(
    m: llguidance.LLMatcher, table: TokenTable, state: ScanState | None, hints: list[list[int]], room: int
) -> list[int] | None:
    """Type the first hint (or hint suffix) the grammar takes and after which the string can end
    (JSON) or the output can end (not JSON); consumes it on `m`. None if none fits."""
    for tokens in hints:
        if len(tokens) >= room:
            continue
        c = m.deep_copy()
        if c.try_consume_tokens(tokens) != len(tokens):
            continue
        s = state
        for t in tokens:
            s = table.advance(s, t) if s is not None else None
        if s is None:
            done = c.is_accepting()
        else:
            done = s.mode == _OUT or _can_close_string(c, table, s)
        if done:
            m.consume_tokens(tokens)
            return list(tokens)
    return None


_SEARCH_DEPTH = 4
_SEARCH_NODES = 192
_SEARCH_WIDTH = 24


def _search_chars(
    m: llguidance.LLMatcher, table: TokenTable, state: ScanState | None, hint_chars: frozenset[int], room: int
) -> list[int] | None:
    """Breadth-first over single-character tokens, up to `_SEARCH_DEPTH` deep and `_SEARCH_NODES`
    matchers: the shortest string after which the string can end (JSON) or the output can
    (not JSON), e.g. the unit letter a `duration` needs after its digits. Digits are tried as
    0 and 1 only; where more than `_SEARCH_WIDTH` characters are allowed (free text), the hint
    characters first. Consumes the result on `m`; None if nothing is found."""
    frontier = [(m, state, [])]
    nodes = 0
    for _ in range(min(_SEARCH_DEPTH, room - 1)):
        deeper = []
        for node, s, typed in frontier:
            words = np.frombuffer(node.compute_bitmask(), dtype=np.uint32)
            allowed = allowed_bits(words, table.single_char_ids)
            chars = [bt for bt, ok in zip(table.single_chars, allowed.tolist(), strict=True) if ok]
            digits = [bt for bt in chars if 0x30 <= bt[0] <= 0x39][:2]
            chars = [bt for bt in chars if not 0x30 <= bt[0] <= 0x39] + digits
            if len(chars) > _SEARCH_WIDTH:
                chars = sorted(chars, key=lambda bt: bt[0] not in hint_chars)[:_SEARCH_WIDTH]
            for _, t in chars:
                c = node.deep_copy()
                if not c.consume_token(t):
                    continue
                s2 = table.advance(s, t) if s is not None else None
                path = [*typed, t]
                if c.is_accepting() if s2 is None else s2.mode == _OUT or _can_end_string_now(c, table, s2):
                    m.consume_tokens(path)
                    return path
                deeper.append((c, s2, path))
                nodes += 1
                if nodes >= _SEARCH_NODES:
                    return None
        frontier = deeper
    return None


def _can_end_string_now(c: llguidance.LLMatcher, table: TokenTable, s: ScanState) -> bool:
    """Whether the string can end right here (a bare `"` is allowed): one token checked, where a
    mask costs a walk of the whole vocabulary (~0.3 ms inside a format's string on a 65k vocab,
    at every node of `_search_chars`)."""
    if table.quote is None:
        return _can_close_string(c, table, s)
    return s.mode == _STR and c.validate_tokens([table.quote]) == 1


def _can_close_string(c: llguidance.LLMatcher, table: TokenTable, s: ScanState) -> bool:
    """Whether a token that ends the string is allowed (it may add text before its `"`)."""
    if table.quote is not None and s.mode == _STR and c.validate_tokens([table.quote]) == 1:
        return True
    words = np.frombuffer(c.compute_bitmask(), dtype=np.uint32)
    return bool(allowed_bits(words, table.closes_string[s.mode]).any())
