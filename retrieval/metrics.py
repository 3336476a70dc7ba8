"""Retrieval metrics with trec_eval's definitions (what BEIR reports through pytrec_eval):
nDCG@k with linear gains and log2(rank + 1) discounts, ideal ranking from the judgments; recall@k
= relevant documents in the top k / relevant documents. Averaged over the judged queries; a query
without results scores 0. Runs are ranked lists (best first), so there are no score ties to
break."""

from __future__ import annotations

import math


def ndcg_at_k(ranking: list[str], qrels: dict[str, int], k: int) -> float:
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if qrels.get(d, 0) > 0)
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: list[str], qrels: dict[str, int], k: int) -> float:
    rel = {d for d, g in qrels.items() if g > 0}
    return len(rel & set(ranking[:k])) / len(rel) if rel else 0.0


def evaluate(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10, recall@10 and recall@100 of `run` (query id -> ranked doc ids) over the
    queries in `qrels`; each ranking must hold distinct documents."""
    out = {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0}
    for q, rels in qrels.items():
        ranking = run.get(q, [])
        assert len(set(ranking)) == len(ranking), f"query {q}: a document appears twice"
        out["ndcg@10"] += ndcg_at_k(ranking, rels, 10)
        out["recall@10"] += recall_at_k(ranking, rels, 10)
        out["recall@100"] += recall_at_k(ranking, rels, 100)
    return {m: v / len(qrels) for m, v in out.items()} if qrels else out


def pytrec_evaluate(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float] | None:
    """The same numbers from pytrec_eval (trec_eval itself), or None if it is not installed."""
    try:
        import pytrec_eval
    except ImportError:
        return None
    scored = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in run.items()}
    for q in qrels:
        scored.setdefault(q, {})
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100"})
    per = ev.evaluate({q: scored[q] for q in qrels})
    n = len(qrels)
    return {
        "ndcg@10": sum(v["ndcg_cut_10"] for v in per.values()) / n,
        "recall@10": sum(v["recall_10"] for v in per.values()) / n,
        "recall@100": sum(v["recall_100"] for v in per.values()) / n,
    }
