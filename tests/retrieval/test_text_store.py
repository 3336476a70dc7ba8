"""Chunk texts beside an embedded collection (`text_store`): Chroma holds vectors and metadata
only, every read path gets the texts back, rows a killed run leaves are swept, deletes reach both
stores, collections made before the move still read their texts from Chroma, and a damaged text
file is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.errors import StoreUnavailableError
from jamba_stack.retrieval.ingest import ingest, rebuild_bm25
from jamba_stack.retrieval.search import open_retriever
from jamba_stack.retrieval.store import Store, StoreCollection
from jamba_stack.retrieval.text_store import STORE_FILE, TextStore


def corpus(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "cells.md").write_text("# Cells\n\nMitochondria make ATP.\n\n## Blood\n\nHemoglobin carries oxygen.")
    (d / "sugar.txt").write_text("Insulin lowers blood glucose.")
    return d


def test_embedded_collection_keeps_texts_beside_chroma(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = corpus(tmp_path / "docs"), tmp_path / "data"
    r = ingest(docs, "kbase", data_dir=data, embedder=embedder)
    col = Store(data).open("kbase")
    assert col.chroma.metadata["texts"] == "local" and col.texts is not None
    stored = col.chroma.get(include=["documents", "metadatas"])
    assert stored["documents"] == [None] * r.chunks_total  # Chroma indexes no text
    assert all(m["source"] for m in stored["metadatas"])  # metadata stays there for `where`
    assert col.texts.ids() == set(stored["ids"]) and (col.state_dir / STORE_FILE).is_file()

    # Every read path returns the texts: get, query, full scan, and search through both retrievers.
    got = {c.id: c.text for c, _ in col.get(stored["ids"])}
    assert any(t.endswith("Hemoglobin carries oxygen.") for t in got.values()) and all(got.values())
    near = col.query(embedder.embed_query("insulin"), 1)
    assert near[0][0].text == "Insulin lowers blood glucose." and near[0][0].metadata["source"]
    assert {i: t for ids, texts, _ in col.iter_all(page=2) for i, t in zip(ids, texts, strict=True)} == got
    retriever = open_retriever("kbase", data_dir=data, embedder=embedder)
    for mode in ("hybrid", "dense", "bm25"):
        assert retriever.search("who carries oxygen", 1, mode=mode)[0].text.endswith("carries oxygen.")


def test_deletes_reach_the_texts_and_a_killed_runs_rows_are_swept(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = corpus(tmp_path / "docs"), tmp_path / "data"
    ingest(docs, "kbase", data_dir=data, embedder=embedder)
    col = Store(data).open("kbase")
    assert col.texts is not None
    before = col.texts.ids()
    # What a run killed between its text write and its Chroma write leaves: a row with no chunk.
    col.texts.put(["orphan"], ["never reached Chroma"])
    (docs / "sugar.txt").unlink()  # a change, so the next run rebuilds and sweeps
    r = ingest(docs, "kbase", data_dir=data, embedder=embedder)
    assert r.files_removed == 1 and r.chunks_deleted == 1
    chroma_ids = set(col.chroma.get(include=[])["ids"])
    assert col.texts.ids() == chroma_ids and len(chroma_ids) == len(before) - 1


def test_a_collection_made_before_the_move_reads_its_texts_from_chroma(
    tmp_path: Path, embedder: Embedder
) -> None:
    store = Store(tmp_path / "data")
    meta = {"embedder": embedder.name, "embedder_dim": embedder.dim, "created_by": "jamba-stack"}
    raw = store.client.get_or_create_collection(
        "old", metadata=meta, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    col = StoreCollection(store, raw, store.state_dir("old"))
    assert col.texts is None
    texts = ["Mitochondria make ATP.", "Insulin lowers blood glucose."]
    col.upsert(["a", "b"], embedder.embed_documents(texts), texts, [{"source": "x"}, {"source": "y"}])
    assert raw.get(ids=["b"], include=["documents"])["documents"] == [texts[1]]
    assert col.query(embedder.embed_query("insulin"), 1)[0][0].text == texts[1]
    assert sorted(rebuild_bm25(col, save=False).ids) == ["a", "b"]
    assert not (store.state_dir("old") / STORE_FILE).exists()


def test_missing_text_rows_are_a_clear_error(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = corpus(tmp_path / "docs"), tmp_path / "data"
    ingest(docs, "kbase", data_dir=data, embedder=embedder)
    col = Store(data).open("kbase")
    assert col.texts is not None
    col.texts.delete(col.texts.ids())
    with pytest.raises(StoreUnavailableError, match="missing from .*texts.sqlite.*ingest again"):
        col.query(embedder.embed_query("insulin"), 1)
    assert col.query(embedder.embed_query("insulin"), 1, documents=False)[0][0].text == ""


def test_text_store_is_bound_to_its_collection(tmp_path: Path) -> None:
    texts = TextStore.open(tmp_path, "col-1")
    texts.put(["a", "b"], ["one", "two"])
    assert texts.get(["b", "a", "zz"]) == {"a": "one", "b": "two"} and texts.count() == 2
    assert texts.sweep(["a"]) == 1 and texts.ids() == {"a"}
    texts.close()
    assert TextStore.open(tmp_path, "col-1").ids() == {"a"}
    assert TextStore.open(tmp_path, "col-2").count() == 0  # a collection made again starts empty
    many = [f"id{i}" for i in range(1200)]  # past SQLite's bound-parameter limit
    big = TextStore.open(tmp_path, "col-3")
    big.put(many, many)
    assert len(big.get(many)) == 1200
    big.delete(many[:700])
    assert big.count() == 500 and np.array_equal(sorted(big.ids()), sorted(many[700:]))
