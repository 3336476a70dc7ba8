"""RAFT's JSONL lines stay one line for every reader, whatever text a model wrote."""

from __future__ import annotations

import json

from jamba_stack.retrieval.raft.jsonl import dumps_line, split_lines


def test_line_break_characters_inside_strings_do_not_split_a_row() -> None:
    rows = [{"q": "a\u0085b", "t": "c\u2028d\u2029e", "n": "é\n\t"}, {"q": "plain"}]
    text = "".join(dumps_line(r) for r in rows)
    assert len(text.splitlines()) == 2  # Python's splitlines breaks at U+0085/2028/2029 when raw
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert [json.loads(line) for line in split_lines(text)] == rows
    assert "é" in text  # non-ASCII stays readable
