"""Hints for closing paths: short strings that satisfy a spec's string patterns and formats.

Inside a string that cannot end yet (a `pattern`, a `format`), a closing rollout first tries to
type one of these (`closing.rollout`): an example per format llguidance enforces, and one per
regex read with Python's `re` parser; their suffixes finish a string that is under way.
"""

from __future__ import annotations

import re
from typing import Any

# Short strings that satisfy each string format llguidance enforces; their suffixes finish one
# that is under way (e.g. "@a.co" after a local part).
_FORMAT_HINTS = {
    "email": "a@a.co",
    "hostname": "a.co",
    "uri": "http://a.co",
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "ipv4": "1.1.1.1",
    "ipv6": "::1",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def spec_hints(spec: Any) -> list[str]:
    """Short strings that satisfy the patterns and formats in a JSON Schema (walked whole) or a
    regex, with their suffixes, shortest first."""
    found: list[str] = []
    if isinstance(spec, str):
        ex = _regex_example(spec)
        if ex:
            found.append(ex)
    else:
        _collect(spec, found)
    out: dict[str, None] = {}
    for h in found:
        for i in range(len(h)):
            out.setdefault(h[i:], None)
    return sorted(out, key=len)[:64]


def _collect(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            ex = _regex_example(node["pattern"])
            if ex:
                found.append(ex)
        if isinstance(node.get("format"), str) and node["format"] in _FORMAT_HINTS:
            found.append(_FORMAT_HINTS[node["format"]])
        if isinstance(node.get("patternProperties"), dict):
            for p in node["patternProperties"]:
                ex = _regex_example(p)
                if ex:
                    found.append(ex)
        for v in node.values():
            _collect(v, found)
    elif isinstance(node, list):
        for v in node:
            _collect(v, found)


def _regex_example(pattern: str) -> str | None:
    """A short string the pattern matches (Python `re` reading of the pattern), or None."""
    try:
        import re._parser as sre_parse  # noqa: PLC0415 - private, but stable since 3.11
    except ImportError:  # pragma: no cover
        return None
    try:
        parsed = sre_parse.parse(pattern)
        text = _example(parsed.data if hasattr(parsed, "data") else parsed)
    except (re.error, ValueError, TypeError, RecursionError, IndexError):
        return None
    return text if text and len(text) <= 64 and re.search(pattern, text) else None


def _example(items: Any) -> str:
    from re import _constants as c  # noqa: PLC0415

    out = []
    for op, av in items:
        if op is c.LITERAL:
            out.append(chr(av))
        elif op is c.ANY:
            out.append("a")
        elif op is c.IN:
            out.append(_class_example(av, c))
        elif op is c.BRANCH:
            out.append(min((_example(b) for b in av[1]), key=len))
        elif op is c.SUBPATTERN:
            out.append(_example(av[-1]))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            lo, _hi, sub = av
            out.append(_example(sub) * lo)
        elif op in (c.AT, getattr(c, "ASSERT", None), getattr(c, "ASSERT_NOT", None)):
            continue
        else:
            raise ValueError(op)
    return "".join(out)


def _class_example(av: Any, c: Any) -> str:
    if av and av[0][0] is c.NEGATE:
        excluded = {chr(v) for op, v in av[1:] if op is c.LITERAL}
        return next(ch for ch in "a0_-. " if ch not in excluded)
    op, v = av[0]
    if op is c.LITERAL:
        return chr(v)
    if op is c.RANGE:
        return chr(v[0])
    if op is c.CATEGORY:
        return {c.CATEGORY_DIGIT: "0", c.CATEGORY_WORD: "a", c.CATEGORY_SPACE: " "}.get(v, "a")
    raise ValueError(op)
