"""Semantic chunking with the real all-MiniLM-L6-v2 embedder: cuts fall at the topic change, chunks
stay within the token budget, and `raft generate --chunking semantic` builds its corpus with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jamba_stack.retrieval.chunking import count_tokens
from jamba_stack.retrieval.loaders import Document
from jamba_stack.retrieval.semantic_chunking import SemanticChunker, sentence_spans

CATS = [
    "Cats were domesticated in the Near East about ten thousand years ago.",
    "A cat sleeps for most of the day and hunts at dusk.",
    "Cats groom their fur with rough tongues.",
    "Kittens learn to hunt by watching their mother cat.",
    "Domestic cats purr when they are content.",
]
MARKETS = [
    "The stock market fell sharply after the central bank raised interest rates.",
    "Bond yields rose as investors sold government debt.",
    "Inflation data pushed traders to expect further rate hikes.",
    "Bank shares dropped while currency markets stayed volatile.",
    "Analysts cut their forecasts for corporate earnings.",
]
TEXT = " ".join(CATS + MARKETS)


def test_sentences_are_exact_slices() -> None:
    text = "One two. Three? Four!\nA line without a stop\n\n  Last one."
    got = [text[a:b] for a, b in sentence_spans(text)]
    assert got == ["One two.", "Three?", "Four!", "A line without a stop", "Last one."]


def test_cuts_at_the_topic_change(embedder) -> None:  # noqa: ANN001
    chunker = SemanticChunker(embedder, 200)
    pieces = chunker.split(TEXT, 200)
    assert [p for p, _ in pieces] == [" ".join(CATS), " ".join(MARKETS)]
    counter = embedder.token_counter()
    assert [n for _, n in pieces] == [count_tokens(counter, p) for p, _ in pieces]


def test_chunks_stay_under_the_budget_and_within_a_topic(embedder) -> None:  # noqa: ANN001
    counter = embedder.token_counter()
    long = " ".join(f"w{i}" for i in range(60)) + "."  # one sentence far over the budget
    doc = Document(
        f"# Notes\n\n{TEXT} {long}", {"source": "notes.md", "doc_id": "notes.md"}, markup="markdown"
    )
    chunks = SemanticChunker(embedder, 32).chunk_many([doc])[0]
    assert len(chunks) > 4
    for c in chunks:
        assert count_tokens(counter, c.text) <= 32, c.text
        assert c.metadata["n_tokens"] <= 32 and c.metadata["chunking"] == "semantic"
        assert c.text.startswith("Notes\n") and c.metadata["heading"] == "Notes"
        body = c.text.removeprefix("Notes\n")
        in_cats = any(s in body for s in CATS)
        in_markets = any(s in body for s in MARKETS)
        assert not (in_cats and in_markets), body  # the topic change is always a cut
    assert [c.metadata["chunk_index"] for c in chunks] == list(range(len(chunks)))
    joined = " ".join(c.text.removeprefix("Notes\n") for c in chunks)
    assert all(s in joined for s in CATS + MARKETS)  # every sentence lands whole in some chunk
    assert set(re.findall(r"\bw\d+\b", joined)) == {f"w{i}" for i in range(60)}


def test_bad_settings_are_refused(embedder) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="chunk_tokens=8"):
        SemanticChunker(embedder, 8)
    with pytest.raises(ValueError, match="percentile=120"):
        SemanticChunker(embedder, 64, percentile=120)


def test_raft_corpus_uses_semantic_chunks(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    from jamba_stack.retrieval.raft.corpus import build_corpus

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "mixed.txt").write_text(TEXT + "\n")
    kw = {"data_dir": tmp_path / "d", "embedder": embedder, "chunk_tokens": 200}
    chunks, retriever = build_corpus(docs, chunking="semantic", **kw)
    assert [c.text for c in chunks] == [" ".join(CATS), " ".join(MARKETS)]
    assert retriever.search("interest rates and bond yields", 1)[0].text == " ".join(MARKETS)
    again, _ = build_corpus(docs, chunking="semantic", **kw)  # idempotent: same ids, nothing added
    assert [c.id for c in again] == [c.id for c in chunks]
    tokens, r2 = build_corpus(docs, chunking="tokens", **kw)  # another collection: no mixing
    assert r2.collection.name != retriever.collection.name
    assert [c.text for c in tokens] == [TEXT]
    with pytest.raises(ValueError, match="chunking='words'"):
        build_corpus(docs, chunking="words", **kw)


def test_generate_command_takes_chunking(tmp_path: Path) -> None:
    from jamba_stack.app.cli.raft import raft_app

    (tmp_path / "a.txt").write_text(TEXT)
    res = CliRunner().invoke(
        raft_app,
        [
            "generate", "--docs", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--chunking",
            "words", "--embedder", "minilm-fp32", "--data-dir", str(tmp_path / "d"), "-q",
        ],
    )  # fmt: skip
    assert res.exit_code == 2 and "chunking='words'" in res.output


def test_generate_command_with_semantic_chunks(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json

    from jamba_stack.app.cli.raft import raft_app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "mixed.txt").write_text(TEXT + "\n")
    (docs / "other.txt").write_text("Volcanoes erupt molten rock. Lava cools into basalt.\n")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question": "What raised interest rates?", "answer": "the central bank",
                                 "source": "mixed.txt"}) + "\n")  # fmt: skip
    out = tmp_path / "out"
    res = CliRunner().invoke(
        raft_app,
        [
            "generate", "--docs", str(docs), "--out", str(out), "--model", str(tiny_model_dir), "--questions",
            str(qfile), "--p", "1", "--distractors", "2", "--chunking", "semantic", "--chunk-tokens", "200",
            "--retries", "0", "--embedder", "minilm-fp32", "--data-dir",
            str(tmp_path / "d"), "--eval-fraction", "0", "--no-hf", "--json", "-q",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["chunking"] == "semantic"
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 1, summary
    for row in rows:
        texts = {d["text"] for d in row["documents"]}
        assert texts == {
            " ".join(CATS),
            " ".join(MARKETS),
            "Volcanoes erupt molten rock. Lava cools into basalt.",
        }
        assert row["oracle_text"] == " ".join(MARKETS)
