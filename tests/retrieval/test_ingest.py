"""Ingest into a real embedded Chroma with the real embedder: idempotence, changes, pruning,
filters on both retrievers, embedder mismatch, and bad requests that must write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from retrieval_files import write_pdf

from jamba_stack.retrieval.bm25 import BM25Index
from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.errors import (
    CollectionNotFoundError,
    EmbedderMismatchError,
    IngestLockedError,
    InvalidQueryError,
    PathNotAllowedError,
    QueryTooLongError,
)
from jamba_stack.retrieval.ingest import bm25_dir, dirty_mark, ingest, try_lock
from jamba_stack.retrieval.rerank import MaxSimReranker, Reranker
from jamba_stack.retrieval.search import Retriever, open_retriever
from jamba_stack.retrieval.store import Store


class Counting(Embedder):
    """Wraps the real embedder and counts what it embeds."""

    def __init__(self, inner: Embedder, name: str | None = None) -> None:
        self.inner = inner
        self.name = name or inner.name
        self.dim = inner.dim
        self.backend = inner.backend
        self.max_tokens = inner.max_tokens
        self.special_tokens = inner.special_tokens
        self.texts: list[str] = []

    def token_counter(self):  # noqa: ANN201
        return self.inner.token_counter()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        return self.inner.embed_batch(texts)


PARA = "Mamba layers keep a constant-size state while attention layers keep a KV cache that grows. "


def make_corpus(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "guide.md").write_text(
        "# Guide\n\nJamba mixes attention and Mamba.\n\n## Install\n\n"
        + PARA * 12
        + "\n\n## Use\n\nCall generate."
    )
    (d / "notes.txt").write_text("Reciprocal rank fusion merges rankings.\n\n" + "BM25 scores terms. " * 40)
    rows = [
        {"_id": f"r{i}", "title": f"Record {i}", "text": f"Record {i} is about topic {i % 3} and enzymes."}
        for i in range(6)
    ]
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_pdf(d / "paper.pdf", ["Page one: hemoglobin binds oxygen.", "Page two: insulin lowers glucose."])
    return d


def counts(data: Path, name: str) -> tuple[int, int, list[str]]:
    col = Store(data).open(name)
    ids = sorted(col.chroma.get(include=[])["ids"])
    idx = BM25Index.load(bm25_dir(col))
    assert idx is not None
    return col.count(), len(idx), ids if sorted(idx.ids) == ids else []


def test_ingest_twice_changes_nothing_and_embeds_nothing(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = make_corpus(tmp_path / "docs"), tmp_path / "data"
    emb = Counting(embedder)
    r1 = ingest(docs, "col1", data_dir=data, embedder=emb)
    assert r1.files_new == 4 and r1.chunks_added == r1.chunks_total == len(emb.texts) > 10
    assert r1.bm25_total == r1.chunks_total and r1.documents == 1 + 1 + 6 + 2
    n, n_bm25, ids = counts(data, "col1")
    assert n == n_bm25 == r1.chunks_total and len(set(ids)) == n

    emb.texts.clear()
    r2 = ingest(docs, "col1", data_dir=data, embedder=emb)
    assert emb.texts == [] and r2.chunks_added == 0 and r2.chunks_deleted == 0 and r2.files_unchanged == 4
    assert counts(data, "col1") == (n, n, ids)


def test_changed_file_replaces_only_its_changed_chunks(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = make_corpus(tmp_path / "docs"), tmp_path / "data"
    emb = Counting(embedder)
    ingest(docs, "col2", data_dir=data, embedder=emb)
    col = Store(data).open("col2")
    before = {
        s: set(col.ids_where({"source": str((docs / s).resolve())}))
        for s in ["guide.md", "notes.txt", "records.jsonl", "paper.pdf"]
    }
    guide = docs / "guide.md"
    guide.write_text(guide.read_text().replace("Call generate.", "Call generate, then chat."))
    rows = (docs / "records.jsonl").read_text().splitlines()
    rows[2] = json.dumps({"_id": "r2", "title": "Record 2", "text": "Record 2 now covers kinases."})
    (docs / "records.jsonl").write_text("\n".join(rows) + "\n")
    emb.texts.clear()
    r = ingest(docs, "col2", data_dir=data, embedder=emb)
    assert r.files_changed == 2 and r.files_unchanged == 2
    assert r.chunks_added == 2 == len(emb.texts) and r.chunks_deleted == 2  # one section, one record
    assert any("then chat" in t for t in emb.texts) and any("kinases" in t for t in emb.texts)
    after = {s: set(col.ids_where({"source": str((docs / s).resolve())})) for s in before}
    assert after["notes.txt"] == before["notes.txt"] and after["paper.pdf"] == before["paper.pdf"]
    assert (
        len(after["guide.md"] - before["guide.md"]) == 1 and len(before["guide.md"] - after["guide.md"]) == 1
    )
    n, n_bm25, ids = counts(data, "col2")
    assert n == n_bm25 == r.chunks_total and ids
    hits = open_retriever("col2", data_dir=data, embedder=embedder).search("kinases", 3, mode="bm25")
    assert hits[0].doc_id == "r2"


def test_removed_and_emptied_files_lose_their_chunks(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = make_corpus(tmp_path / "docs"), tmp_path / "data"
    ingest(docs, "col3", data_dir=data, embedder=embedder)
    (docs / "notes.txt").unlink()
    (docs / "guide.md").write_text("")
    r = ingest(docs, "col3", data_dir=data, embedder=embedder)
    assert r.files_removed == 1 and any(s.reason.startswith("empty") for s in r.skipped)
    col = Store(data).open("col3")
    assert not col.ids_where({"source": str((docs / "notes.txt").resolve())})
    assert not col.ids_where({"source": str((docs / "guide.md").resolve())})
    n, n_bm25, ids = counts(data, "col3")
    assert n == n_bm25 and ids


def test_search_modes_filters_pages(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = make_corpus(tmp_path / "docs"), tmp_path / "data"
    ingest(docs, "col4", data_dir=data, embedder=embedder)
    ret = open_retriever("col4", data_dir=data, embedder=embedder)
    hits = ret.search("what lowers glucose?", 3)
    assert hits[0].metadata["page"] == 2 and hits[0].source.endswith("paper.pdf")
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score
    assert set(hits[0].to_json()) >= {"rank", "chunk_id", "doc_id", "source", "score", "text"}
    notes = str((docs / "notes.txt").resolve())
    for mode in ("hybrid", "dense", "bm25"):
        got = ret.search("Mamba state and rank fusion", 10, mode=mode, filters={"source": notes})
        assert got and {h.source for h in got} == {notes}, mode
        got = ret.search(
            "enzymes topic", 10, mode=mode, filters={"format": "jsonl", "doc_id": {"$in": ["r1", "r4"]}}
        )
        assert {h.doc_id for h in got} == {"r1", "r4"}, mode
    assert len({h.doc_id for h in ret.search("Record", 6, unique_docs=True)}) == 6

    class InsulinFirst(Reranker):  # a stand-in cross-encoder (none ships offline): prefers "insulin"
        def score(self, query: str, texts: list[str]) -> np.ndarray:
            return np.array([t.count("insulin") for t in texts], dtype=np.float32)

    reranked = Retriever(ret.collection, embedder, ret.bm25, reranker=InsulinFirst()).search("hemoglobin", 3)
    assert "insulin" in reranked[0].text and reranked[0].score == 1.0
    # Ingest stored every chunk's token vectors, so the default retriever reranks with MaxSim; one
    # opened without a reranker refuses rerank=True.
    assert isinstance(ret.reranker, MaxSimReranker) and ret.reranker.tokens is not None
    plain = open_retriever("col4", data_dir=data, embedder=embedder, reranker="none")
    assert plain.reranker is None
    with pytest.raises(InvalidQueryError, match="no reranker"):
        plain.search("x", 3, rerank=True)
    rrf = Retriever(ret.collection, embedder, ret.bm25, fusion="rrf").search("what lowers glucose?", 3)
    assert rrf[0].metadata["page"] == 2
    diverse = ret.search("Mamba state", 4, mmr=True, mmr_lambda=0.3)
    assert len(diverse) == 4 and len({h.chunk_id for h in diverse}) == 4
    with pytest.raises(InvalidQueryError, match="empty"):
        ret.search("   ", 3)
    with pytest.raises(InvalidQueryError, match="k=0"):
        ret.search("x", 0)


def test_bad_requests_write_nothing(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = make_corpus(tmp_path / "docs"), tmp_path / "data"
    with pytest.raises(CollectionNotFoundError, match="ingest PATH --collection nope"):
        open_retriever("nope", data_dir=data, embedder=embedder)
    with pytest.raises(PathNotAllowedError):
        ingest(docs, "col5", data_dir=data, embedder=embedder, root=tmp_path / "elsewhere")
    assert "col5" not in Store(data).list_collections()
    ingest(docs, "col5", data_dir=data, embedder=embedder, root=tmp_path)
    before = counts(data, "col5")
    ret = open_retriever("col5", data_dir=data, embedder=embedder)
    with pytest.raises(QueryTooLongError, match="100,000 characters"):
        ret.search("a" * 100_000, 5)
    with pytest.raises(EmbedderMismatchError, match="was built with embedder"):
        ingest(docs, "col5", data_dir=data, embedder=Counting(embedder, name="other-model"))
    with pytest.raises(EmbedderMismatchError):
        open_retriever("col5", data_dir=data, embedder=Counting(embedder, name="other-model"))
    lock = try_lock(Store(data).open("col5"))
    try:
        with pytest.raises(IngestLockedError):
            ingest(docs, "col5", data_dir=data, embedder=embedder)
    finally:
        lock.close()
    assert counts(data, "col5") == before


def test_bm25_out_of_sync_is_rebuilt_from_chroma(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = make_corpus(tmp_path / "docs"), tmp_path / "data"
    ingest(docs, "col6", data_dir=data, embedder=embedder)
    col = Store(data).open("col6")
    n = col.count()
    col.delete(col.ids_where({"source": str((docs / "notes.txt").resolve())}))  # behind BM25's back
    dirty_mark(col).touch()
    ret = open_retriever("col6", data_dir=data, embedder=embedder)
    assert len(ret.bm25) == col.count() < n and not dirty_mark(col).exists()
    assert all(not h.source.endswith("notes.txt") for h in ret.search("BM25 scores terms", 5, mode="bm25"))
