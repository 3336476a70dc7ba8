"""Token vectors stored at ingest (retrieval/token_store.py) on the real all-MiniLM-L6-v2: the
codecs keep MaxSim's scores, the store fits, converts, deletes and syncs, and search's rerank
reads candidates from it instead of running them through the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jamba_stack.retrieval.embeddings import Embedder, TokenVectors
from jamba_stack.retrieval.errors import InvalidQueryError
from jamba_stack.retrieval.ingest import ingest
from jamba_stack.retrieval.rerank import MaxSimReranker
from jamba_stack.retrieval.search import open_retriever
from jamba_stack.retrieval.store import Store
from jamba_stack.retrieval.token_store import DEFAULT_CODEC, TokenStore, make_codec

TEXTS = [
    "Hemoglobin in red blood cells carries oxygen from the lungs to the tissues.",
    "Mitochondria produce ATP, the energy currency of the cell, by oxidative phosphorylation.",
    "Insulin lowers blood glucose by promoting its uptake into muscle and fat.",
    "The thermostat keeps the room at 21 degrees in winter.",
    "Warfarin inhibits vitamin K epoxide reductase and so the clotting factors.",
    "Ribosomes translate messenger RNA into proteins in the cytoplasm.",
] * 8


class Counting(Embedder):
    """The real embedder, counting the texts it runs through the model as documents."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.dim, self.backend = inner.name, inner.dim, inner.backend
        self.max_tokens, self.special_tokens = inner.max_tokens, inner.special_tokens
        self.supports_tokens = True
        self.documents = 0

    def token_counter(self):  # noqa: ANN201
        return self.inner.token_counter()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.documents += len(texts)
        return self.inner.embed_batch(texts)

    def embed_batch_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        self.documents += len(texts)
        return self.inner.embed_batch_tokens(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)

    def embed_query_tokens(self, text: str) -> tuple[np.ndarray, TokenVectors]:
        return self.inner.embed_query_tokens(text)


@pytest.fixture(scope="module")
def vectors(embedder) -> list[TokenVectors]:  # noqa: ANN001
    return embedder.embed_batch_tokens(TEXTS[:6])[1]


def test_codecs_keep_maxsim_scores(embedder, vectors: list[TokenVectors]) -> None:  # noqa: ANN001
    q = embedder.embed_query_tokens("What carries oxygen in the blood?")[1]
    exact = MaxSimReranker.maxsim(q.vecs, [v.vecs for v in vectors])
    sample = np.concatenate([v.vecs for v in embedder.embed_batch_tokens(TEXTS[:6] * 3)[1]])
    for name, tol in [("f16", 1e-3), ("i8", 0.01), ("pca128x8", 0.05), (DEFAULT_CODEC, 0.08)]:
        codec = make_codec(name, embedder.dim)
        codec.fit(sample)
        got = MaxSimReranker.maxsim(codec.query(q.vecs), [codec.roundtrip(v.vecs) for v in vectors])
        # PCA drops a constant per query token (q . mean): compare after centering.
        assert np.abs((got - got.mean()) - (exact - exact.mean())).max() < tol, name
        assert int(np.argmax(got)) == int(np.argmax(exact)) == 0, name
    assert make_codec(DEFAULT_CODEC, 384).bytes_per_token() == 64
    assert make_codec("i8", 384).bytes_per_token() == 386
    for bad in ("pca128x3", "zip", "pca999x4"):
        with pytest.raises(InvalidQueryError, match="pca"):
            make_codec(bad, 384)


def test_store_fits_once_then_converts_and_keeps_rows(tmp_path: Path, vectors: list[TokenVectors]) -> None:
    n_tokens = sum(len(v.ids) for v in vectors)
    store = TokenStore.open(tmp_path, 384, DEFAULT_CODEC, fit_tokens=n_tokens + 1)
    store.put([f"c{i}" for i in range(6)], vectors)
    assert store.codec.name == "i8" and store.stats().bytes > 386 * n_tokens  # interim rows
    before = store.get(["c0"])["c0"].vecs
    store.put(["d0"], vectors[:1])  # crosses fit_tokens: fitted and converted
    assert store.codec.name == DEFAULT_CODEC
    stats = store.stats()
    assert stats.chunks == 7 and stats.tokens == n_tokens + len(vectors[0].ids)
    assert stats.bytes == (64 + 2) * stats.tokens
    got = store.get(["c0", "d0", "missing"])
    assert set(got) == {"c0", "d0"} and np.array_equal(got["c0"].ids, vectors[0].ids)
    # Converted and new rows of one text decode to the same codes, ranking texts as the interim ones.
    assert np.allclose(got["c0"].vecs, got["d0"].vecs)
    q = vectors[0].vecs
    interim = MaxSimReranker.maxsim(q, [before, vectors[3].vecs])
    fitted = MaxSimReranker.maxsim(
        store.codec.query(q), [got["c0"].vecs, store.codec.roundtrip(vectors[3].vecs)]
    )
    assert interim[0] > interim[1] and fitted[0] > fitted[1]
    # Rows come back in the order first written, in the store's codec (what copying a store into
    # another codec replays).
    items = list(store.items(batch=2))
    assert [cid for cid, _ in items] == [f"c{i}" for i in range(6)] + ["d0"]
    assert np.allclose(items[0][1].vecs, got["c0"].vecs) and np.array_equal(items[6][1].ids, vectors[0].ids)
    store.delete(["c0", "c1"])
    assert store.count() == 5
    store.close()
    again = TokenStore.open_existing(tmp_path)  # another process opening it sees the fitted codec
    assert again is not None and again.codec.name == DEFAULT_CODEC and again.count() == 5
    with pytest.raises(InvalidQueryError, match="--token-vectors pca128x4"):
        TokenStore.open(tmp_path, 384, "i8")


def test_search_reranks_from_the_store_without_encoding_candidates(
    tmp_path: Path, embedder: Embedder
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    for i, t in enumerate(TEXTS[:6]):
        (docs / f"p{i}.txt").write_text(t)
    report = ingest(docs, "stored", data_dir=data, embedder=embedder)
    assert report.token_vectors == 6 and report.token_codec.startswith(f"{DEFAULT_CODEC} (kept as i8")
    counting = Counting(embedder)
    r = open_retriever("stored", data_dir=data, embedder=counting)  # default: MaxSim from the store
    assert isinstance(r.reranker, MaxSimReranker) and r.reranker.tokens is not None
    hits = r.search("What carries oxygen in the blood?", 3)
    assert counting.documents == 0  # only the query went through the model
    assert hits[0].text == TEXTS[0] and "first_stage_rank" in hits[0].metadata
    # Without stored vectors the same reranker encodes the candidates, to nearly the same order.
    encoded = MaxSimReranker(counting).rerank(
        "What carries oxygen in the blood?", r.search("What carries oxygen in the blood?", 6, rerank=False)
    )
    assert counting.documents == 6 and encoded[0].chunk_id == hits[0].chunk_id
    assert open_retriever("stored", data_dir=data, embedder=embedder, reranker="none").reranker is None

    # Chroma is read for the answer's chunks only; the lazy path ranks as the full read does
    # (unique_docs reads every candidate in full: one chunk per document here).
    reads: list[list[str]] = []
    real_get = r.collection.get
    r.collection.get = lambda ids, **kw: (reads.append(list(ids)), real_get(ids, **kw))[1]  # type: ignore[method-assign]
    q = "What carries oxygen in the blood?"
    lazy = r.search(q, 3)
    assert sum(map(len, reads)) == 3
    full = r.search(q, 3, unique_docs=True)
    assert [(h.chunk_id, h.text, h.score, h.metadata) for h in lazy] == [
        (h.chunk_id, h.text, h.score, h.metadata) for h in full
    ]
    # A candidate without a stored row: its text is read and encoded, and it still ranks.
    assert isinstance(r.reranker, MaxSimReranker) and r.reranker.tokens is not None
    r.reranker.tokens.delete([lazy[0].chunk_id])
    reads.clear()
    before = counting.documents
    again = r.search(q, 3)
    assert counting.documents == before + 1 and any(lazy[0].chunk_id in batch for batch in reads[:1])
    assert again[0].chunk_id == lazy[0].chunk_id and again[0].text == TEXTS[0]


def test_ingest_backfills_and_sweeps_token_vectors(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    for i, t in enumerate(TEXTS[:4]):
        (docs / f"p{i}.txt").write_text(t)
    ingest(docs, "backfill", data_dir=data, embedder=embedder, token_vectors=None)
    col = Store(data).open("backfill")
    assert TokenStore.open_existing(col.state_dir) is None
    assert open_retriever("backfill", data_dir=data, embedder=embedder).reranker is None  # auto: none to read
    counting = Counting(embedder)
    r = ingest(docs, "backfill", data_dir=data, embedder=counting)  # nothing changed: vectors backfilled
    assert r.files_unchanged == 4 and r.chunks_added == 0 and r.token_vectors == 4 and counting.documents == 4
    store = TokenStore.open_existing(col.state_dir)
    assert store is not None and store.ids() == set(col.chroma.get(include=[])["ids"])
    (docs / "p0.txt").unlink()
    (docs / "p9.txt").write_text(TEXTS[5])
    r = ingest(docs, "backfill", data_dir=data, embedder=embedder)
    assert (
        r.token_vectors == 1 and store.ids() == set(col.chroma.get(include=[])["ids"]) and store.count() == 4
    )
    assert isinstance(open_retriever("backfill", data_dir=data, embedder=embedder).reranker, MaxSimReranker)
