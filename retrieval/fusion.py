"""Fusing the dense and BM25 rankings.

- `convex_fusion` (the default): each retriever's scores min-max normalized over its own
  candidates, then a weighted sum (Bruch, Gai and Ingber, "An Analysis of Fusion Functions for
  Hybrid Retrieval", TOIS 2023); a chunk one retriever did not return gets 0 from it.
- `reciprocal_rank_fusion` (Cormack, Clarke and Buettcher, SIGIR 2009), with per-ranking
  weights: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

Every constant here was tuned on the SciFact *train* split only (`bench/retrieval/scifact.py --tune`);
the test split never chose anything. On train (nDCG@10, int8 MiniLM + bm25s k1=0.9 b=0.4,
chunk-level, 809 queries): convex alpha=0.5 0.737; RRF k=10, dense 0.75 0.726; RRF k=60
unweighted 0.717. Hence convex is the default and RRF is one flag away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FUSION = "convex"
CONVEX_WEIGHTS = {"dense": 0.5, "bm25": 0.5}
RRF_K = 10
RRF_WEIGHTS = {"dense": 0.75, "bm25": 1.0}


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], *, k: float = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """(id, fused score) best first; ties keep the order of first appearance (ranking 0 first)."""
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def convex_fusion(
    scored: Sequence[Mapping[str, float]], *, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """(id, fused score in [0, 1]) best first. Each mapping (id -> raw score, any scale) is
    min-max normalized to [0, 1]; a list whose scores are all equal normalizes to 1."""
    if weights is None:
        weights = [1.0 / len(scored)] * len(scored) if scored else []
    if len(weights) != len(scored):
        raise ValueError(f"{len(weights)} weights for {len(scored)} score lists")
    fused: dict[str, float] = {}
    for scores, w in zip(scored, weights, strict=True):
        if not scores:
            continue
        lo, hi = min(scores.values()), max(scores.values())
        span = hi - lo
        for doc, s in scores.items():
            fused[doc] = fused.get(doc, 0.0) + w * ((s - lo) / span if span > 0 else 1.0)
    return sorted(fused.items(), key=lambda kv: -kv[1])
