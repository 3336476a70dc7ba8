"""Optional second-stage reranking of the fused hybrid candidates.

`Reranker` is the interface: implement `score(query, texts)`; the base gives `rerank(query, hits)`,
which re-scores `Hit`s and returns them reordered (ranks renumbered, `score` = the reranker's).
A `Reranker` also plugs into `jamba_stack.retrieval.search.Retriever(reranker=...)`, which calls `score`.

Built in:
- `CrossEncoderReranker`: a sentence-transformers `CrossEncoder` the user has locally (a folder,
  or a hub id already in the local cache); never downloads.
- `MaxSimReranker`: late interaction (ColBERT's MaxSim) over the token embeddings of the
  embedder that built the collection (all-MiniLM-L6-v2 by default), so it works offline with
  nothing more to install. Query tokens are weighted by their IDF among the candidates; the score
  is blended with the fused first-stage score (`alpha`). With the collection's `TokenStore` (kept
  by ingest) it reads the candidates' token vectors instead of encoding them: the query is the
  only text it runs through the model.

`make_reranker(spec)` builds one from the CLI's `--rerank` value.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jamba_stack.retrieval.embeddings import Embedder, TokenVectors
from jamba_stack.retrieval.errors import RerankerUnavailableError
from jamba_stack.retrieval.hits import Hit
from jamba_stack.retrieval.token_store import TokenStore

# Chosen on the SciFact train split (all 809 queries; `python -m bench.retrieval.scifact --split train
# --grid`), from the token vectors ingest stores (codecs pca128x4, pca64x4, i8, f16), over candidates
# 20 / 30 / 50 / 100, blend weights 0.3-0.7 and query-token weighting none / local IDF: with the
# default codec, local-IDF MaxSim over the hybrid's top 30 blended 0.5 with the fused score (nDCG@10
# 0.7490) is within 0.001 of the best cell (top 50 or 100, 0.7494); hybrid alone 0.7362.
# docs/retrieval.md has the grid and the test-split numbers.
MAXSIM_ALPHA = 0.5
RERANK_CANDIDATES = 30
MAXSIM_WEIGHTING = "idf"


class Reranker(ABC):
    """Re-scores (query, passage) pairs; higher is more relevant."""

    name: str = "reranker"
    wants_query_tokens: bool = False
    """Whether `rerank` uses the query's `TokenVectors` (the caller may pass the ones it made
    with the query's vector, saving a model pass)."""

    @abstractmethod
    def score(self, query: str, texts: list[str]) -> np.ndarray:
        """One float32 score per text, shape (len(texts),), comparable within this call only.

        Called with a non-empty query and 1+ texts; raises on model failure (no retries)."""

    def rerank(
        self,
        query: str,
        candidates: Sequence[Hit],
        top_k: int | None = None,
        *,
        query_tokens: TokenVectors | None = None,
    ) -> list[Hit]:
        """`candidates` reordered by `score` (best first, ties keep their first-stage order),
        cut to `top_k`, with ranks renumbered from 1 and `score` set to the reranker's score; each
        hit's metadata gains `first_stage_score` and `first_stage_rank`. `query_tokens`: the
        query's `TokenVectors` where the caller has them (see `wants_query_tokens`)."""
        hits = list(candidates)
        if not hits:
            return []
        scores = self._final_scores(query, hits, query_tokens)
        order = np.argsort(-scores, kind="stable")[: top_k or len(hits)]
        out = []
        for rank, i in enumerate(order, start=1):
            h = hits[int(i)]
            meta = {**h.metadata, "first_stage_score": h.score, "first_stage_rank": h.rank}
            out.append(dataclasses.replace(h, rank=rank, score=float(scores[i]), metadata=meta))
        return out

    def needs_texts(self, chunk_ids: list[str]) -> list[str]:
        """Which candidates' texts `rerank` reads (the caller may pass the others' hits with an
        empty text, saving reading them from the store): all of them unless a reranker knows better."""
        return list(chunk_ids)

    def _final_scores(self, query: str, hits: list[Hit], query_tokens: TokenVectors | None) -> np.ndarray:
        return np.asarray(self.score(query, [h.text for h in hits]), dtype=np.float32)


class CrossEncoderReranker(Reranker):
    """A local sentence-transformers `CrossEncoder` (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2).

    `model`: a folder, or a hub id that is already in the local Hugging Face cache. Loaded with
    `local_files_only=True`: nothing is downloaded. Raises `RerankerUnavailableError` when the
    model (or sentence-transformers) cannot be loaded, naming the path and the fix."""

    def __init__(self, model: str | Path, *, batch_size: int = 32, device: str = "cpu") -> None:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as e:
            raise RerankerUnavailableError(
                f"the cross-encoder reranker needs sentence-transformers: pip install sentence-transformers ({e})"
            ) from e
        self.name = str(model)
        fix = "pass a local folder of a sentence-transformers CrossEncoder, or use --rerank maxsim"
        if not Path(model).is_dir():
            # Checked before loading: a hub id that is not cached would make the hub client retry
            # an unreachable network for minutes before failing.
            from huggingface_hub import try_to_load_from_cache

            hub_id = str(model)
            cached = hub_id.count("/") == 1 and not hub_id.startswith((".", "/", "~"))
            if not cached or not isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
                raise RerankerUnavailableError(
                    f"cross-encoder {hub_id!r} is neither a folder nor a model in the local Hugging Face "
                    f"cache (nothing is downloaded): {fix}"
                )
        try:
            self.model = CrossEncoder(str(model), device=device, local_files_only=True)
        except (OSError, ValueError) as e:
            raise RerankerUnavailableError(f"cannot load cross-encoder {model!r}: {e}: {fix}") from e
        self.batch_size = batch_size

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        pairs = [(query, t) for t in texts]
        return np.asarray(
            self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False), dtype=np.float32
        )


class MaxSimReranker(Reranker):
    """Late interaction over a bi-encoder's token embeddings: for each query token, the best cosine
    similarity to any passage token, averaged over the query's tokens (ColBERT's MaxSim; special
    tokens and punctuation left out on both sides).

    `weighting="idf"` (the default) averages with weights idf(t) = ln(1 + (n - df + 0.5) / (df +
    0.5)), df = how many of the n passages scored together contain the query token (the same
    wordpiece id): a token every candidate shares (the topic word that retrieved them all) counts
    little, one that tells them apart counts much. The statistic comes from the candidates alone, so
    the reranker needs no collection pass. `weighting="none"` is the plain mean.

    all-MiniLM-L6-v2 was trained for pooled vectors, not MaxSim, yet token-level matching adds a
    signal the pooled vector and BM25 miss; blended with the first-stage score it ranks best on
    SciFact. `rerank` returns `alpha * minmax(maxsim) + (1 - alpha) * minmax(first-stage score)`
    over the candidates; `score` (what `Retriever` calls, with no first-stage scores) is MaxSim alone.

    `embedder`: an `OnnxEmbedder` or `SentenceTransformerEmbedder` (the one the collection was
    built with is already loaded: pass `retriever.embedder`). `tokens`: the collection's
    `TokenStore`; `rerank` then reads the candidates' token vectors from it by chunk id (encoding
    only those it lacks) and scores in its codec's space. Raises `RerankerUnavailableError` for an
    embedder that exposes no token embeddings (e.g. an OpenAI endpoint), `ValueError` for an
    `alpha` outside [0, 1] or an unknown `weighting`."""

    wants_query_tokens = True

    def __init__(
        self,
        embedder: Embedder,
        *,
        alpha: float = MAXSIM_ALPHA,
        weighting: str = MAXSIM_WEIGHTING,
        batch_size: int = 16,
        tokens: TokenStore | None = None,
    ) -> None:
        if not supports_maxsim(embedder):
            raise RerankerUnavailableError(
                f"the MaxSim reranker needs token embeddings, which embedder {embedder.name!r} "
                f"({type(embedder).__name__}) does not give: use a local minilm/onnx/st embedder, "
                "or a cross-encoder (--rerank PATH)"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in [0, 1]")
        if weighting not in ("idf", "none"):
            raise ValueError(f"weighting={weighting!r}: use idf or none")
        self.embedder = embedder
        self.alpha = alpha
        self.weighting = weighting
        self.batch_size = batch_size
        self.tokens = tokens
        self.name = f"maxsim:{embedder.name}"

    def token_embeddings(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, its content tokens' unit vectors, shape (n_tokens, dim), float32; a text
        with no content token gets its [CLS] vector so every text has one row."""
        return [t.vecs for t in self.token_vectors(texts)]

    def token_vectors(self, texts: list[str]) -> list[TokenVectors]:
        """Per text, its content tokens' ids and unit vectors (see `token_embeddings`), from the
        embedder's document graph."""
        out: list[TokenVectors] = []
        for i in range(0, len(texts), self.batch_size):
            out += self.embedder.embed_batch_tokens(texts[i : i + self.batch_size])[1]
        return out

    @staticmethod
    def maxsim(
        query_tokens: np.ndarray, passage_tokens: list[np.ndarray], weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Per passage, the (weighted) mean over query tokens of the max cosine to the passage's
        tokens; `weights` (n_query_tokens,) non-negative, None for the plain mean."""
        if not passage_tokens:
            return np.zeros(0, dtype=np.float32)
        # One matmul over all passages' tokens, then the max within each passage's columns: the
        # per-passage Python loop cost more than the arithmetic at 30 candidates.
        sims = query_tokens @ np.concatenate(passage_tokens).T  # (n_query_tokens, all passage tokens)
        best = np.maximum.reduceat(sims, _starts(passage_tokens), axis=1)  # (n_query_tokens, n_passages)
        if weights is None:
            return best.mean(axis=0).astype(np.float32)
        w = np.asarray(weights, dtype=np.float32) / max(float(np.sum(weights)), 1e-12)
        return (w @ best).astype(np.float32)

    @staticmethod
    def local_idf(query_ids: np.ndarray, passage_ids: list[np.ndarray]) -> np.ndarray:
        """BM25's idf of each query token among the passages: ln(1 + (n - df + 0.5) / (df + 0.5)),
        shape (n_query_tokens,), all > 0."""
        n = len(passage_ids)
        df = np.zeros(len(query_ids), dtype=np.float32)
        if n:
            hit = np.asarray(query_ids)[:, None] == np.concatenate(passage_ids)[None, :]
            df += np.maximum.reduceat(hit, _starts(passage_ids), axis=1).sum(axis=1)
        return np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)

    def score_vectors(self, query: TokenVectors, passages: list[TokenVectors]) -> np.ndarray:
        """`score` from token vectors already computed (what a benchmark caches)."""
        weights = self.local_idf(query.ids, [p.ids for p in passages]) if self.weighting == "idf" else None
        return self.maxsim(query.vecs, [p.vecs for p in passages], weights)

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        q = self.embedder.embed_query_tokens(query)[1]
        return self.score_vectors(q, self.token_vectors(texts))

    def needs_texts(self, chunk_ids: list[str]) -> list[str]:
        """Only the chunks whose token vectors are not stored (they are encoded from their text)."""
        if self.tokens is None:
            return list(chunk_ids)
        stored = self.tokens.present(chunk_ids)
        return [c for c in chunk_ids if c not in stored]

    def stored_vectors(self, hits: list[Hit]) -> list[TokenVectors]:
        """The hits' token vectors in the store codec's space: read by chunk id, and encoded (then
        passed through the codec) for the chunks the store lacks."""
        assert self.tokens is not None
        got = self.tokens.get([h.chunk_id for h in hits])
        lacking = [h for h in hits if h.chunk_id not in got]
        if lacking:
            for h, t in zip(lacking, self.token_vectors([h.text for h in lacking]), strict=True):
                got[h.chunk_id] = TokenVectors(t.ids, self.tokens.codec.roundtrip(t.vecs))
        return [got[h.chunk_id] for h in hits]

    def _final_scores(self, query: str, hits: list[Hit], query_tokens: TokenVectors | None) -> np.ndarray:
        q = query_tokens if query_tokens is not None else self.embedder.embed_query_tokens(query)[1]
        if self.tokens is None:
            ms = self.score_vectors(q, self.token_vectors([h.text for h in hits]))
        else:
            q = TokenVectors(q.ids, self.tokens.codec.query(q.vecs))
            ms = self.score_vectors(q, self.stored_vectors(hits))
        first = np.asarray([h.score for h in hits], dtype=np.float32)
        return blend(ms, first, self.alpha)


def _starts(parts: list[np.ndarray]) -> np.ndarray:
    """Where each part begins in their concatenation (every part has at least one row)."""
    return np.concatenate([[0], np.cumsum([len(p) for p in parts[:-1]])]).astype(np.intp)


def supports_maxsim(embedder: Embedder) -> bool:
    """Whether `MaxSimReranker` can use `embedder` (it needs the model's token vectors)."""
    return embedder.supports_tokens


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def blend(rerank_scores: np.ndarray, first_stage: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * minmax(rerank) + (1 - alpha) * minmax(first stage), over one candidate list."""
    return (alpha * _minmax(rerank_scores) + (1 - alpha) * _minmax(first_stage)).astype(np.float32)


def make_reranker(
    spec: str | Reranker | None, embedder: Embedder | None = None, tokens: TokenStore | None = None
) -> Reranker | None:
    """A reranker from a spec: None / "" / "none" -> None; "maxsim" -> `MaxSimReranker` over
    `embedder` (reading the collection's stored token vectors from `tokens` where given);
    "maxsim:ALPHA" sets its blend weight and "maxsim:ALPHA:none" (or ":idf") its query-token
    weighting; anything else -> `CrossEncoderReranker(spec)` (a local folder or cached hub id). A
    `Reranker` passes through.
    Raises `RerankerUnavailableError`."""
    if spec is None or isinstance(spec, Reranker):
        return spec
    s = str(spec).strip()
    if s.lower() in ("", "none", "off"):
        return None
    kind, _, arg = s.partition(":")
    if kind.lower() == "maxsim":
        if embedder is None:
            raise RerankerUnavailableError("the maxsim reranker needs the collection's embedder")
        weight, _, weighting = arg.partition(":")
        try:
            alpha = float(weight) if weight else MAXSIM_ALPHA
        except ValueError:
            raise RerankerUnavailableError(
                f"--rerank {s!r}: the weight after maxsim: must be a number"
            ) from None
        weighting = weighting.lower() or MAXSIM_WEIGHTING
        if weighting not in ("idf", "none") or not 0.0 <= alpha <= 1.0:
            raise RerankerUnavailableError(
                f"--rerank {s!r}: use maxsim, maxsim:W or maxsim:W:idf|none with W from 0 to 1"
            )
        return MaxSimReranker(embedder, alpha=alpha, weighting=weighting, tokens=tokens)
    return CrossEncoderReranker(s)
