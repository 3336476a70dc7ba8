"""JSON Lines that every reader splits the same way.

`json.dumps(..., ensure_ascii=False)` escapes control characters but writes U+0085, U+2028 and
U+2029 raw; Python's `str.splitlines()` (and some editors and loaders) break lines there, so a row
whose text holds one (a model can write anything) would be read as two broken lines. We escape
those three, and read by "\n" only.
"""

from __future__ import annotations

import json
from typing import Any

_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def dumps_line(obj: Any) -> str:
    """One JSONL line (with its "\\n"); non-ASCII kept readable, line-break characters escaped."""
    text = json.dumps(obj, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)  # only ever inside JSON strings, where the escape is valid
    return text + "\n"


def split_lines(text: str) -> list[str]:
    """The non-empty lines of a JSONL text, split at "\\n" only."""
    return [line for line in text.split("\n") if line.strip()]
