"""`uniqueItems: true`, enforced while decoding: an array item may never close equal to an
earlier item of the same array.

llguidance compiles a grammar, and no grammar says "unlike the items before" (the set of
arrays without repeats is not context-free), so `narrow_schema` leaves the keyword out of what
llguidance sees and the matcher enforces it on top: a `UniqueTracker` follows the JSON written so
far (which array, which item, the items closed), and before each step `restrict` clears from the
grammar's mask every token that would close an item equal to an earlier one. Closing paths (the
budget's way to finish, `closing.py`) are held to the same rule.

Covered: arrays whose items are strings, numbers, integers, booleans or null, or an enum or const
of those, wherever the array sits (properties, additionalProperties, items, prefixItems, `$ref`,
allOf / anyOf / oneOf; under anyOf / oneOf the rule applies if any alternative asks for it).
Items compare by value as JSON Schema says: strings after unescaping, numbers by value (1 and 1.0
are equal). Refused with a message (`UniqueSpec.of`): arrays of objects or arrays, items without a
type, `uniqueItems` under if / then / else, not, contains, patternProperties, dependentSchemas,
propertyNames or unevaluated*, and `minItems` beyond the distinct values an enum allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jamba_runtime.structured.unique_spec import UniqueSpec, bare_key

_WS = b" \t\n\r"
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OUT, _STR, _ESC = 0, 1, 2


@dataclass
class _Frame:
    is_object: bool
    nodes: list[dict]
    unique: bool = False
    index: int = 0  # arrays: the item being written
    seen: set[Any] = field(default_factory=set)  # unique arrays: keys of the closed items
    key: str | None = None  # objects: the key whose value is being written
    expect_key: bool = True  # objects: the next string is a key
    want_item: bool = True  # arrays: after "[" or ",", before the next item starts


@dataclass
class _State:
    stack: list[_Frame] = field(default_factory=list)
    mode: int = _OUT
    string: bytearray | None = None  # the string being written, when it is a key or a unique item
    string_is_key: bool = False
    bare: bytearray | None = None  # the number or literal being written, in a unique array
    in_bare: bool = False
    started: bool = False

    def clone(self) -> _State:
        stack = [
            _Frame(
                f.is_object,
                f.nodes,
                f.unique,
                f.index,
                set(f.seen) if f.unique else f.seen,
                f.key,
                f.expect_key,
            )
            for f in self.stack
        ]
        return _State(
            stack,
            self.mode,
            None if self.string is None else bytearray(self.string),
            self.string_is_key,
            None if self.bare is None else bytearray(self.bare),
            self.in_bare,
            self.started,
        )


class UniqueTokens:
    """Per tokenizer: each token's bytes, and which tokens can close an item (they hold a quote,
    or a byte that ends a number or literal). Built once per compiler, on first use."""

    def __init__(self, lltokenizer: Any, vocab_size: int) -> None:
        n = min(vocab_size, lltokenizer.vocab_size)
        self.bytes: list[bytes] = [b""] * vocab_size
        self.by_bytes: dict[bytes, list[int]] = {}
        quote: list[int] = []
        closer: list[int] = []
        for i in range(n):
            if lltokenizer.is_special_token(i):
                continue
            b = lltokenizer.decode_bytes([i])
            self.bytes[i] = b
            if b:
                self.by_bytes.setdefault(b, []).append(i)
            if b'"' in b:
                quote.append(i)
                closer.append(i)
            elif any(c in b for c in b",]}" + _WS):
                closer.append(i)
        self.in_string = np.asarray(quote, dtype=np.int64)  # may end a string
        self.outside = np.asarray(closer, dtype=np.int64)  # may end a bare value or hold a string
        self.max_len = max((len(b) for b in self.by_bytes), default=1)

    def spelling(self, text: bytes) -> list[int]:
        """The tokens whose bytes are exactly `text`."""
        return self.by_bytes.get(text, [])


class UniqueTracker:
    """One sequence's view of its JSON output for `uniqueItems`: feed it each token taken
    (`feed`), ask it to clear the tokens that would repeat an item (`restrict`). `clone` for a
    copy to roll out on. Not thread-safe: the matcher's owner drives it."""

    def __init__(self, spec: UniqueSpec, tokens: UniqueTokens, state: _State | None = None) -> None:
        self.spec = spec
        self.tokens = tokens
        self.state = state if state is not None else _State()

    def clone(self) -> UniqueTracker:
        return UniqueTracker(self.spec, self.tokens, self.state.clone())

    def feed(self, token_id: int) -> bool:
        """Advance by a token; False if it closed an item equal to an earlier one (the caller
        kept it out of the mask, so only a forced token can)."""
        data = self.tokens.bytes[token_id] if token_id < len(self.tokens.bytes) else b""
        return _advance(self.spec, self.state, data)

    @property
    def active(self) -> bool:
        """Whether the next token may close an item of a unique array."""
        s = self.state
        if not s.stack:
            return False
        top = s.stack[-1]
        return (
            (not top.is_object and top.unique) or s.in_bare or (s.string is not None and not s.string_is_key)
        )

    def restrict(self, bitmask: torch.Tensor, row: int, matcher: Any = None) -> bool:
        """Clear from `bitmask[row]` each allowed token that would close an item equal to an
        earlier one, and (given the sequence's llguidance `matcher`) each that would lead into a
        dead end: an unfinished item every finish of which repeats an earlier one (`1` when 1 is
        taken and the schema allows no longer number). False when no allowed token is left."""
        if not self.active:
            return True
        words = bitmask[row].numpy().view(np.uint32)
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")
        cleared = False
        cands = set(self._closers(allowed))
        if matcher is not None:
            cands.update(self._toward_repeats(allowed))
        for t in sorted(cands):
            after = self.clone()
            if not _advance(after.spec, after.state, self.tokens.bytes[t]) or (
                matcher is not None and after._risky() and not self._viable_after(matcher, t, _VIABLE_NODES)
            ):
                words[t // 32] &= np.uint32(~(1 << (t % 32)) & 0xFFFFFFFF)
                cleared = True
        return not cleared or bool(words.any())

    def _partial_and_spellings(self) -> tuple[bytes, list[bytes]] | None:
        """The item under way as written so far (b"" between items) and how each earlier item
        of its array may be written; None outside a unique array with earlier items."""
        s = self.state
        top = s.stack[-1] if s.stack else None
        if top is None or top.is_object or not top.unique or not top.seen:
            return None
        strings = [b'"' + r for r in _string_spellings(top.seen)]
        if s.string is not None and not s.string_is_key:
            return b'"' + bytes(s.string), strings
        if s.in_bare and s.bare is not None:
            partial = bytes(s.bare)
            return partial, _bare_spellings(top.seen, partial)
        if s.mode == _OUT and not s.in_bare:
            every = strings + _bare_spellings(top.seen, b"")
            return b"", every + [b" " + x for x in every]  # the space of the item separator ", "
        return None

    def _risky(self) -> bool:
        """An item is under way whose text so far some spelling of an earlier item starts with,
        or one is about to start (after "," in a unique array with earlier items)."""
        s = self.state
        if not self._item_open():
            top = s.stack[-1] if s.stack else None
            return top is not None and not top.is_object and top.unique and bool(top.seen) and top.want_item
        found = self._partial_and_spellings()
        return found is not None and any(sp.startswith(found[0]) for sp in found[1])

    def _closers(self, allowed: np.ndarray) -> list[int]:
        """Allowed tokens that may close an item from here."""
        cands = self.tokens.in_string if self.state.mode != _OUT else self.tokens.outside
        cands = cands[cands < allowed.size]
        return cands[allowed[cands].astype(bool)].tolist()

    def _toward_repeats(self, allowed: np.ndarray) -> list[int]:
        """Allowed tokens that extend the item under way (or start one) into text that some
        spelling of an earlier item starts with: only those can lead into a dead end (every other
        unfinished item has a finish unlike all earlier ones)."""
        found_spellings = self._partial_and_spellings()
        if found_spellings is None:
            return []
        partial, spellings = found_spellings
        found: set[int] = set()
        for spelling in spellings:
            if not spelling.startswith(partial):
                continue
            rest = spelling[len(partial) :]
            for k in range(1, min(len(rest), self.tokens.max_len) + 1):
                found.update(t for t in self.tokens.spelling(rest[:k]) if t < allowed.size and allowed[t])
        return sorted(found)

    def _viable_after(self, matcher: Any, token: int, budget: int, zeros: bool = False) -> bool:
        """Whether, after `token`, the item under way can still finish unlike every earlier item
        (searched over the grammar, at most `budget` matcher states; True when the search runs out).

        Zeros after a number's point do not change its value: a search that has added zeros once
        and is offered only zeros again stops there (more would only repeat it)."""
        data = self.tokens.bytes[token]
        padding = (
            bool(data) and set(data) == {0x30} and self.state.in_bare and b"." in (self.state.bare or b"")
        )
        if padding and zeros:
            return False
        m = matcher.deep_copy()
        if not m.consume_token(token):
            return True  # the grammar refuses it anyway
        after = self.clone()
        if not _advance(after.spec, after.state, self.tokens.bytes[token]):
            return False
        if not after._risky():
            return True  # no item under way, or one no earlier item's spelling starts with
        allowed = np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), bitorder="little")
        moves = set(after._closers(allowed)) | set(after._toward_repeats(allowed))
        if int(allowed.sum()) > len(moves):
            return True  # some token takes the item off every earlier item's spelling
        for t in sorted(moves):
            budget -= 1
            if budget <= 0 or after._viable_after(m, t, budget, zeros or padding):
                return True
        return False

    def _item_open(self) -> bool:
        s = self.state
        return s.in_bare or (s.string is not None and not s.string_is_key)

    def accepts(self, path: Iterable[int]) -> bool:
        """Whether following `path` from here closes no item equal to an earlier one."""
        state = self.state.clone()
        return all(
            _advance(self.spec, state, self.tokens.bytes[t] if t < len(self.tokens.bytes) else b"")
            for t in path
        )


_VIABLE_NODES = 64  # matcher states a dead-end search may visit per token


def _string_spellings(seen: set[Any]) -> list[bytes]:
    """How the string items among `seen` are written inside their quotes, closing quote included
    (as llguidance writes strings: JSON escapes only where JSON needs them)."""
    return [json.dumps(v, ensure_ascii=False)[1:].encode() for kind, v in seen if kind == "s"]


def _bare_spellings(seen: set[Any], partial: bytes) -> list[bytes]:
    """How the numbers and literals among `seen` may be written, as far as they concern the
    number under way `partial`: plain decimal, and with zeros after the point (1, 1., 1.0, 1.00,
    ...; a `partial` that is such a spelling continues with more zeros)."""
    out = []
    for kind, v in seen:
        if kind == "l":
            out.append(v.encode())
            continue
        if kind != "n":
            continue
        text = format(v.normalize(), "f").encode()
        fraction = text if b"." in text else text + b"."
        out += [text, fraction]
        out += [fraction + b"0" * j for j in range(1, 4)]
        if partial.startswith(text) and _only_zeros_after(partial[len(text) :], b"." in text):
            out += [partial + b"0" * j for j in range(0, 9)]
    return out


def _only_zeros_after(rest: bytes, has_point: bool) -> bool:
    """`rest` (what follows a number's plain spelling) adds only a point and zeros."""
    if not has_point:
        if not rest.startswith(b"."):
            return rest == b""
        rest = rest[1:]
    return set(rest) <= {0x30}


def _advance(spec: UniqueSpec, s: _State, data: bytes) -> bool:
    """Run `data` through the scanner state `s` (in place); False if an item closed equal to an
    earlier one of its unique array."""
    ok = True
    for c in data:
        if s.mode == _ESC:
            s.mode = _STR
            if s.string is not None:
                s.string.append(c)
            continue
        if s.mode == _STR:
            if c == _BACKSLASH:
                s.mode = _ESC
                if s.string is not None:
                    s.string.append(c)
            elif c == _QUOTE:
                s.mode = _OUT
                ok = _end_string(s) and ok
            elif s.string is not None:
                s.string.append(c)
            continue
        if s.in_bare:
            if c in _WS or c in b",]}:":
                ok = _end_bare(s) and ok
            else:
                if s.bare is not None:
                    s.bare.append(c)
                continue
        if c in _WS:
            continue
        top = s.stack[-1] if s.stack else None
        if top is not None and not top.is_object and c not in b",]":
            top.want_item = False  # an item starts
        if c == _QUOTE:
            s.mode = _STR
            if top is not None and top.is_object and top.expect_key:
                s.string, s.string_is_key = bytearray(), True
            else:
                s.string = bytearray() if top is not None and not top.is_object and top.unique else None
                s.string_is_key = False
        elif c in b"{[":
            nodes = _value_nodes(spec, s, top)
            if c == ord("{"):
                s.stack.append(_Frame(True, nodes))
            else:
                s.stack.append(_Frame(False, nodes, unique=spec.is_unique(nodes)))
            s.started = True
        elif c in b"}]":
            if s.stack:
                s.stack.pop()
        elif c == ord(","):
            if top is not None:
                if top.is_object:
                    top.expect_key, top.key = True, None
                else:
                    top.index += 1
                    top.want_item = True
        elif c == ord(":"):
            if top is not None and top.is_object:
                top.expect_key = False
        else:
            s.in_bare = True
            s.bare = bytearray([c]) if top is not None and not top.is_object and top.unique else None
    return ok


def _value_nodes(spec: UniqueSpec, s: _State, top: _Frame | None) -> list[dict]:
    if top is None:
        return [spec.root] if not s.started else []
    if top.is_object:
        return spec.property_nodes(top.nodes, top.key) if top.key is not None else []
    return spec.item_nodes(top.nodes, top.index)


def _end_string(s: _State) -> bool:
    raw, s.string = s.string, None
    top = s.stack[-1] if s.stack else None
    if raw is None or top is None:
        return True
    try:
        text = json.loads(b'"' + bytes(raw) + b'"')
    except (ValueError, UnicodeDecodeError):
        text = bytes(raw).decode("utf-8", "replace")
    if s.string_is_key:
        s.string_is_key = False
        if top.is_object:
            top.key = text
        return True
    return _close_item(top, ("s", text))


def _end_bare(s: _State) -> bool:
    s.in_bare = False
    raw, s.bare = s.bare, None
    top = s.stack[-1] if s.stack else None
    if raw is None or top is None:
        return True
    return _close_item(top, bare_key(bytes(raw)))


def _close_item(top: _Frame, key: tuple[str, Any]) -> bool:
    if top.is_object or not top.unique:
        return True
    if key in top.seen:
        return False
    top.seen.add(key)
    return True
