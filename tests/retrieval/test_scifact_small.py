"""150 real SciFact abstracts (BEIR corpus.jsonl) and 30 test claims: ids kept, hybrid at least
as good as the weaker retriever alone, and our metrics equal trec_eval's."""

from __future__ import annotations

from pathlib import Path

import pytest

from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.ingest import ingest
from jamba_stack.retrieval.metrics import evaluate, pytrec_evaluate
from jamba_stack.retrieval.search import open_retriever


def test_scifact_subset_hybrid(tmp_path: Path, embedder: Embedder, scifact_small: dict) -> None:
    r = ingest(scifact_small["corpus"], "scifact", data_dir=tmp_path, embedder=embedder)
    assert r.documents == scifact_small["n_docs"] and not r.skipped
    ret = open_retriever("scifact", data_dir=tmp_path, embedder=embedder)
    qids = list(scifact_small["queries"])
    texts = [scifact_small["queries"][q] for q in qids]
    scores = {}
    for mode in ("bm25", "dense", "hybrid"):
        hits = ret.search_many(texts, 30, mode=mode, unique_docs=True)
        run = {q: [h.doc_id for h in hs] for q, hs in zip(qids, hits, strict=True)}
        scores[mode] = evaluate(run, scifact_small["qrels"])
        ref = pytrec_evaluate(run, scifact_small["qrels"])
        if ref is not None:
            for m in ref:
                assert scores[mode][m] == pytest.approx(ref[m], abs=1e-9), (mode, m)
    assert all(
        h.doc_id in {d for q in scifact_small["qrels"].values() for d in q} or h.doc_id.isdigit()
        for h in hits[0]
    )
    assert scores["hybrid"]["ndcg@10"] > min(scores["bm25"]["ndcg@10"], scores["dense"]["ndcg@10"])
    assert scores["hybrid"]["ndcg@10"] > 0.85, scores  # an easy subset: 150 docs, 30 claims
