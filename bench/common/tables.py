"""Markdown tables whose columns line up in a terminal as well as render."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], left: Iterable[int] = (0,)) -> str:
    """`head` and `rows` (cells already formatted as strings) as a markdown table, every column padded
    to its widest cell. Columns whose index is in `left` (negative indices count from the end) are
    left-aligned, the others right-aligned, as numbers read best."""
    lines = [tuple(head), *(tuple(r) for r in rows)]
    n = len(head)
    left_cols = {i % n for i in left}
    widths = [max(len(line[i]) for line in lines) for i in range(n)]
    out = []
    for j, line in enumerate(lines):
        cells = [c.ljust(w) if i in left_cols else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("| " + " | ".join(cells) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
