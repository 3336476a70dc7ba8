"""Hybrid search: dense (Chroma) + BM25 -> fusion (min-max convex by default, or reciprocal rank
fusion) -> optional rerank (`jamba_stack.retrieval.rerank`: MaxSim or a cross-encoder) -> optional
MMR. Metadata filters (Chroma's `where` syntax) apply to both retrievers.

`open_retriever(collection, data_dir=..., chroma_url=...)` is the entry point; `Retriever.search`
returns `Hit`s, best first.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jamba_stack.retrieval.bm25 import BM25Index
from jamba_stack.retrieval.embeddings import Embedder, make_embedder
from jamba_stack.retrieval.errors import InvalidQueryError, QueryTooLongError
from jamba_stack.retrieval.fusion import (
    CONVEX_WEIGHTS,
    FUSION,
    RRF_K,
    RRF_WEIGHTS,
    convex_fusion,
    reciprocal_rank_fusion,
)
from jamba_stack.retrieval.hits import Hit
from jamba_stack.retrieval.rerank import (
    RERANK_CANDIDATES,
    MaxSimReranker,
    Reranker,
    make_reranker,
    supports_maxsim,
)
from jamba_stack.retrieval.store import Store, StoreCollection, StoredChunk
from jamba_stack.retrieval.token_store import TokenStore

Mode = Literal["hybrid", "dense", "bm25"]
Fusion = Literal["convex", "rrf"]
MAX_QUERY_CHARS = 8192
MAX_K = 1000


def normalize_where(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chroma wants one key per filter object: `{"a": 1, "b": 2}` becomes `{"$and": [...]}`."""
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise InvalidQueryError(f"filters must be a JSON object, got {type(filters).__name__}")
    if len(filters) == 1:
        return filters
    return {"$and": [{k: v} for k, v in filters.items()]}


def mmr_select(query: np.ndarray, cands: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: indices into `cands` (n, dim), picked greedily by
    lam * sim(query) - (1 - lam) * max sim(already picked)."""
    rel = cands @ query  # (n,)
    sims = cands @ cands.T  # (n, n)
    picked: list[int] = []
    best_red = np.full(len(cands), -np.inf)
    for _ in range(min(k, len(cands))):
        red = np.where(np.isfinite(best_red), best_red, 0.0)
        score = lam * rel - (1 - lam) * red
        score[picked] = -np.inf
        i = int(np.argmax(score))
        picked.append(i)
        best_red = np.maximum(best_red, sims[i])
    return picked


class Retriever:
    """Search over one collection. Thread-compatible for reads; reopen after an ingest to see it."""

    def __init__(
        self,
        collection: StoreCollection,
        embedder: Embedder,
        bm25: BM25Index,
        *,
        reranker: Reranker | None = None,
        tokens: TokenStore | None = None,
        fusion: Fusion = FUSION,
        weights: dict[str, float] | None = None,
        rrf_k: float = RRF_K,
        max_query_chars: int = MAX_QUERY_CHARS,
    ) -> None:
        """`fusion`: convex (min-max normalized weighted sum, the default) or rrf; `weights`:
        {"dense": w, "bm25": w} for it (defaults tuned on SciFact train, see `jamba_stack.retrieval.fusion`).
        `reranker`: a `Reranker` (its `rerank` reorders the top max(k, `RERANK_CANDIDATES`)
        fused hits, seeing their fused scores), used by every search unless it says otherwise.
        `tokens`: the collection's stored token vectors, for MaxSim rerankers made from a spec."""
        if fusion not in ("convex", "rrf"):
            raise InvalidQueryError(f"fusion={fusion!r}: use convex or rrf")
        self.collection = collection
        self.embedder = embedder
        self.bm25 = bm25
        self.reranker = reranker
        self.tokens = tokens
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.weights = dict(weights or (CONVEX_WEIGHTS if fusion == "convex" else RRF_WEIGHTS))
        self.max_query_chars = max_query_chars
        self._count = collection.count()

    def _check(self, query: str, k: int) -> str:
        if not isinstance(query, str) or not query.strip():
            raise InvalidQueryError("the query is empty: pass some text to search for")
        if len(query) > self.max_query_chars:
            raise QueryTooLongError(
                f"query has {len(query):,} characters, limit {self.max_query_chars:,}: shorten it "
                "(a search query is a question or a few keywords, not a document)"
            )
        if not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k={k} is out of range: use 1 to {MAX_K}")
        return query.strip()

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        mode: Mode = "hybrid",
        filters: dict[str, Any] | None = None,
        candidates: int | None = None,
        rerank: bool | Reranker | None = None,
        mmr: bool = False,
        mmr_lambda: float = 0.5,
        unique_docs: bool = False,
        query_embedding: np.ndarray | None = None,
    ) -> list[Hit]:
        """The top `k` chunks for `query`, best first.

        `mode`: hybrid (dense + BM25, fused), dense or bm25. `filters`: a Chroma `where`
        filter on chunk metadata (`{"source": "/abs/a.pdf"}`, `{"page": {"$gte": 3}}`), applied
        to both retrievers. `candidates`: how many each retriever returns before fusion (default
        max(50, 4k)). `rerank`: reorder the fused top max(k, `RERANK_CANDIDATES`) with the
        retriever's reranker (True; the default when it has one), not at all (False), or with
        this `Reranker`. `mmr`: diversify the final list. `unique_docs`: at most one
        chunk per document (for document-level evaluation such as BEIR).
        Raises `InvalidQueryError`, `QueryTooLongError`.
        """
        query = self._check(query, k)
        if mode not in ("hybrid", "dense", "bm25"):
            raise InvalidQueryError(f"mode={mode!r}: use hybrid, dense or bm25")
        where = normalize_where(filters)
        n = candidates or (max(50, 3 * k) if unique_docs else max(50, 4 * k))
        n = max(1, min(n, self._count))
        if self._count == 0:
            return []
        reranker = rerank if isinstance(rerank, Reranker) else self.reranker if rerank is not False else None
        if rerank is True and self.reranker is None:
            raise InvalidQueryError("rerank asked for, but no reranker is configured: pass --rerank SPEC")

        known: dict[str, StoredChunk] = {}  # chunks read in full (text and metadata)
        vecs: dict[str, np.ndarray] = {}
        rankings: list[list[str]] = []
        raw: list[dict[str, float]] = []
        weights: list[float] = []
        scores: dict[str, float] = {}
        qv = None
        qtok = None
        # MMR needs every candidate's vector and unique_docs every head chunk's doc id: those read
        # the dense hits in full; otherwise only the chunks that reach the answer are read.
        read_dense = mmr or unique_docs
        if mode in ("hybrid", "dense"):
            if query_embedding is not None:
                qv = query_embedding
            elif reranker is not None and reranker.wants_query_tokens:
                qv, qtok = self.embedder.embed_query_tokens(query)  # one model pass for both
            else:
                qv = self.embedder.embed_query(query)
            dense = self.collection.query(qv, n, where, embeddings=mmr, documents=read_dense)
            for c, e in dense:
                if read_dense:
                    known[c.id] = c
                if e is not None:
                    vecs[c.id] = e
            rankings.append([c.id for c, _ in dense])
            raw.append({c.id: 1.0 - c.distance for c, _ in dense})  # cosine similarity
            weights.append(self.weights.get("dense", 1.0))
            if mode == "dense":
                scores = raw[-1]
        if mode in ("hybrid", "bm25"):
            sparse = self.bm25.search(query, n, where)
            rankings.append([cid for cid, _ in sparse])
            raw.append(dict(sparse))
            weights.append(self.weights.get("bm25", 1.0))
            if mode == "bm25":
                scores = raw[-1]
        if mode == "hybrid":
            if self.fusion == "convex":
                fused = convex_fusion(raw, weights=weights)
            else:
                fused = reciprocal_rank_fusion(rankings, k=self.rrf_k, weights=weights)
            order = [cid for cid, _ in fused]
            scores = dict(fused)
        else:
            order = rankings[0]

        def read(ids: list[str]) -> None:
            missing = [cid for cid in ids if cid not in known or (mmr and cid not in vecs)]
            if missing:
                for c, e in self.collection.get(missing, embeddings=mmr):
                    known[c.id] = c
                    if e is not None:
                        vecs[c.id] = e

        if mmr:
            pool = len(order)
        elif reranker is not None:
            pool = max(RERANK_CANDIDATES, k * 3 if unique_docs else k)
        else:
            pool = k * 3 if unique_docs else k
        head = order[: max(pool, k)]
        if read_dense:
            read(head)
            head = [cid for cid in head if cid in known]  # a chunk deleted since BM25 was built

        rerank_meta: dict[str, dict[str, Any]] = {}
        if reranker is not None and head:
            # The reranker sees the fused scores too (MaxSim blends with them), over the candidate
            # count its defaults were tuned for; it reads texts only where it says it must.
            pool_ids = head[: max(RERANK_CANDIDATES, k)]
            read(reranker.needs_texts(pool_ids))
            blank = StoredChunk("", "", {})
            hits = [
                self._hit(rank, cid, known.get(cid, blank), scores.get(cid, 0.0))
                for rank, cid in enumerate(pool_ids, 1)
            ]
            reranked = reranker.rerank(query, hits, query_tokens=qtok)
            head = [h.chunk_id for h in reranked] + head[len(pool_ids) :]  # the tail keeps its fused order
            scores = {h.chunk_id: h.score for h in reranked}
            rerank_meta = {
                h.chunk_id: {
                    "first_stage_score": h.metadata["first_stage_score"],
                    "first_stage_rank": h.metadata["first_stage_rank"],
                }
                for h in reranked
            }
        if mmr and head:
            if qv is None:
                qv = self.embedder.embed_query(query)
            pool_ids = head[: max(50, 4 * k)]
            picked = mmr_select(
                np.asarray(qv, dtype=np.float32),
                np.stack([vecs[c] for c in pool_ids]),
                len(pool_ids),
                mmr_lambda,
            )
            head = [pool_ids[i] for i in picked]
        if unique_docs:
            seen: set[str] = set()
            uniq = []
            for cid in head:
                d = str(known[cid].metadata.get("doc_id", cid))
                if d not in seen:
                    seen.add(d)
                    uniq.append(cid)
            head = uniq
        # Read the answer's chunks; one deleted since BM25 was built (absent) gives way to the next.
        out: list[str] = []
        while len(out) < k and head:
            batch, head = head[: k - len(out)], head[k - len(out) :]
            read(batch)
            out += [cid for cid in batch if cid in known]
        return [
            self._hit(rank, cid, self._with_meta(known[cid], rerank_meta.get(cid)), scores.get(cid, 0.0))
            for rank, cid in enumerate(out, 1)
        ]

    @staticmethod
    def _with_meta(c: StoredChunk, extra: dict[str, Any] | None) -> StoredChunk:
        return c if not extra else dataclasses.replace(c, metadata={**c.metadata, **extra})

    @staticmethod
    def _hit(rank: int, cid: str, c: StoredChunk, score: float) -> Hit:
        return Hit(
            rank,
            cid,
            str(c.metadata.get("doc_id", "")),
            str(c.metadata.get("source", "")),
            float(score),
            c.text,
            c.metadata,
        )

    def search_many(self, queries: list[str], k: int = 10, **kwargs: Any) -> list[list[Hit]]:
        """`search` for each query; the dense query vectors are computed in one batch."""
        for q in queries:
            self._check(q, k)
        qvs = None
        if kwargs.get("mode", "hybrid") in ("hybrid", "dense"):
            qvs = self.embedder.embed_queries([q.strip() for q in queries])
        return [
            self.search(q, k, query_embedding=None if qvs is None else qvs[i], **kwargs)
            for i, q in enumerate(queries)
        ]


def load_bm25(collection: StoreCollection) -> BM25Index:
    """The persisted BM25 index of `collection`, rebuilt from Chroma when it is missing or out of
    sync (another collection id, another chunk count, or a crashed ingest's dirty mark)."""
    from jamba_stack.retrieval.ingest import bm25_dir, dirty_mark, rebuild_bm25, try_lock

    idx = BM25Index.load(bm25_dir(collection))
    fresh = (
        idx is not None
        and idx.info.get("collection_id") == collection.id
        and idx.info.get("count") == collection.count()
        and not dirty_mark(collection).exists()
    )
    if fresh:
        return idx
    lock = try_lock(collection)
    if lock is None:  # an ingest is running: use what is there, it rebuilds when it finishes
        return idx if idx is not None else rebuild_bm25(collection, save=False)
    try:
        return rebuild_bm25(collection, save=True)
    finally:
        lock.close()


DEFAULT_SEARCH_RERANK = "auto"
"""What `search` reranks with unless told: MaxSim over the token vectors ingest stored, where
the collection has them for every chunk (reading them costs a few milliseconds); else nothing."""


def open_retriever(
    collection: str,
    *,
    data_dir: str | Path,
    chroma_url: str = "",
    embedder: Embedder | str | None = None,
    reranker: str | Path | Reranker | None = DEFAULT_SEARCH_RERANK,
    **kwargs: Any,
) -> Retriever:
    """A `Retriever` over an existing collection. `embedder`: an `Embedder`, a spec for
    `make_embedder`, or None for the default. `reranker`: a `Reranker` or a spec for
    `make_reranker` ("maxsim", "maxsim:W", a cross-encoder folder, "none"), used by every
    search; "auto" or None (the default): MaxSim over the stored token vectors where the
    collection has them for every chunk, else none.
    Raises `CollectionNotFoundError`, `EmbedderMismatchError`, `StoreUnavailableError`,
    `RerankerUnavailableError`."""
    store = Store(data_dir, chroma_url)
    col = store.open(collection)
    if not isinstance(embedder, Embedder):
        embedder = make_embedder(embedder or "minilm", cache_dir=Path(data_dir) / "models" / "embeddings")
    col = store.open(collection, embedder_name=embedder.name, dim=embedder.dim)
    tokens = TokenStore.open_existing(col.state_dir) if supports_maxsim(embedder) else None
    rr: Reranker | None
    if reranker is None or reranker == "auto":
        complete = tokens is not None and tokens.count() == col.count() > 0
        rr = MaxSimReranker(embedder, tokens=tokens) if complete else None
    else:
        rr = make_reranker(str(reranker) if isinstance(reranker, Path) else reranker, embedder, tokens)
    return Retriever(col, embedder, load_bm25(col), reranker=rr, tokens=tokens, **kwargs)


def timed_search(retriever: Retriever, query: str, k: int, **kwargs: Any) -> tuple[list[Hit], float]:
    """`search` plus its wall time in milliseconds (for benchmarks)."""
    t = time.perf_counter()
    hits = retriever.search(query, k, **kwargs)
    return hits, (time.perf_counter() - t) * 1000
