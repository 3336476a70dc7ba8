"""The train-split grids of `bench.retrieval.scifact`: BM25 and fusion (`--tune`) and the MaxSim
reranker (`--rerank`, `--rerank-tune`). Chosen on SciFact's train split only; the test split is
reported, never tuned on."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.stats import percentile
from bench.retrieval.beir import checked, load_beir
from jamba_stack.retrieval.metrics import evaluate
from jamba_stack.retrieval.search import Retriever


def run_tune(retriever: Retriever, data: Path) -> dict[str, Any]:
    """Grid over BM25 k1/b and fusion settings on the TRAIN split; prints and returns the table."""
    import bm25s

    from jamba_stack.retrieval.bm25 import tokenize
    from jamba_stack.retrieval.fusion import convex_fusion, reciprocal_rank_fusion

    queries, qrels = load_beir(data, "train")
    col = retriever.collection
    ids, texts, metas = [], [], []
    for a, b, c in col.iter_all():
        ids += a
        texts += b
        metas += c
    doc_of = {i: str(m.get("doc_id")) for i, m in zip(ids, metas, strict=True)}
    qv = retriever.embedder.embed_queries(list(queries.values()))
    dense = {}
    for (q, _), v in zip(queries.items(), qv, strict=True):
        dense[q] = {c.id: 1.0 - c.distance for c, _ in col.query(v, 200)}
    tokens = tokenize(texts)
    qtok = {q: tokenize([t])[0] for q, t in queries.items()}

    def docs(ranked: list[str]) -> list[str]:
        out, seen = [], set()
        for cid in ranked:
            d = doc_of[cid]
            if d not in seen:
                seen.add(d)
                out.append(d)
        return out[:100]

    rows = []
    for k1, b in [(0.9, 0.4), (1.2, 0.75), (1.5, 0.75), (1.2, 0.9)]:
        r = bm25s.BM25(k1=k1, b=b, method="lucene")
        r.index(tokens, show_progress=False)
        sparse = {}
        for q in queries:
            t = [x for x in qtok[q] if x in r.vocab_dict]
            s = r.get_scores(t) if t else np.zeros(len(ids))
            top = np.argsort(-s)[:200]
            sparse[q] = {ids[i]: float(s[i]) for i in top if s[i] > 0}
        rows.append(
            {
                "bm25": [k1, b],
                "fusion": "none",
                "ndcg@10": evaluate({q: docs(list(sparse[q])) for q in queries}, qrels)["ndcg@10"],
            }
        )
        for alpha in (0.3, 0.4, 0.5, 0.6, 0.7):
            run = {
                q: docs(
                    [
                        c
                        for c, _ in convex_fusion(
                            [dict(list(dense[q].items())[:50]), dict(list(sparse[q].items())[:50])],
                            weights=[alpha, 1 - alpha],
                        )
                    ]
                )
                for q in queries
            }
            rows.append(
                {
                    "bm25": [k1, b],
                    "fusion": f"convex dense={alpha}",
                    "ndcg@10": evaluate(run, qrels)["ndcg@10"],
                }
            )
        for k in (5, 10, 20, 60):
            for w in (0.5, 0.75, 1.0, 1.25):
                run = {
                    q: docs(
                        [
                            c
                            for c, _ in reciprocal_rank_fusion(
                                [list(dense[q])[:50], list(sparse[q])[:50]], k=k, weights=[w, 1.0]
                            )
                        ]
                    )
                    for q in queries
                }
                rows.append(
                    {
                        "bm25": [k1, b],
                        "fusion": f"rrf k={k} dense={w}",
                        "ndcg@10": evaluate(run, qrels)["ndcg@10"],
                    }
                )
    rows.sort(key=lambda r: -r["ndcg@10"])
    print("[tune] train split, best 10:")
    for r in rows[:10]:
        print(f"  bm25 k1={r['bm25'][0]} b={r['bm25'][1]}  {r['fusion']:<24} nDCG@10 {r['ndcg@10']:.4f}")
    return {"split": "train", "queries": len(queries), "rows": rows}


# ---------------------------------------------------------------- rerank (optional)


RERANK_GRID = {
    "candidates": (20, 30, 50),
    "alpha": (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0),
    "weighting": ("none", "idf"),
}


def _maxsim_rows(
    retriever: Retriever,
    queries: dict[str, str],
    n: int,
    cache: dict[str, tuple[np.ndarray, np.ndarray]],
    one_at_a_time: bool = False,
) -> list[tuple[str, list[str], np.ndarray, Any, list[Any]]]:
    """Per query: (id, hybrid doc ranking to 100, first-stage scores of the top n, the query's token
    vectors, the top n passages' token vectors). Passage token vectors are cached by chunk id
    (content-addressed, so the cache is valid across ingests of the same corpus). `one_at_a_time`:
    first stage through `search` per query (its vector embedded alone, as `ask` does) instead of
    `search_many` (vectors embedded in batches)."""
    from tqdm.auto import tqdm

    from jamba_stack.retrieval.rerank import MaxSimReranker, TokenVectors

    ms = MaxSimReranker(retriever.embedder)
    qids = list(queries)
    texts = [queries[q] for q in qids]
    if one_at_a_time:
        hits = [retriever.search(t, 100, unique_docs=True) for t in texts]
    else:
        hits = retriever.search_many(texts, 100, unique_docs=True)
    need = {h.chunk_id: h.text for hs in hits for h in hs[:n] if h.chunk_id not in cache}
    ids = list(need)
    for i in tqdm(range(0, len(ids), 64), desc="token vectors", unit="batch"):
        for c, tv in zip(ids[i : i + 64], ms.token_vectors([need[c] for c in ids[i : i + 64]]), strict=True):
            cache[c] = (tv.ids.astype(np.int32), tv.vecs.astype(np.float16))
    rows = []
    for q, qt, hs in zip(qids, ms.token_vectors(texts), hits, strict=True):
        head = hs[:n]
        passages = [TokenVectors(cache[h.chunk_id][0], cache[h.chunk_id][1].astype(np.float32)) for h in head]
        rows.append(
            (q, [h.doc_id for h in hs], np.array([h.score for h in head], dtype=np.float32), qt, passages)
        )
    return rows


def _blend_run(rows: list, alpha: float, n: int, weighting: str, ms: Any) -> dict[str, list[str]]:
    from jamba_stack.retrieval.rerank import blend

    ms.weighting = weighting
    run = {}
    for q, docs, first, qt, passages in rows:
        s = ms.score_vectors(qt, passages[:n])
        order = np.argsort(-blend(s, first[:n], alpha), kind="stable")
        run[q] = [docs[i] for i in order] + docs[n:]
    return run


def _load_cache(path: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import pickle

    if path is not None and path.is_file():
        return pickle.loads(path.read_bytes())
    return {}


def _save_cache(path: Path | None, cache: dict) -> None:
    import pickle

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(cache))
        os.replace(tmp, path)


def run_rerank(
    retriever: Retriever, queries: dict[str, str], qrels: dict, args: argparse.Namespace
) -> dict[str, Any]:
    """The offline MaxSim reranker (jamba_stack.retrieval.rerank) on the hybrid's top documents, blended with the
    fused score. On the test split: the default (RERANK_CANDIDATES, MAXSIM_ALPHA, MAXSIM_WEIGHTING)
    and the previous default (top 30, 0.6, local IDF) for reference, plus the per-query cost of
    reranking. With `--rerank-tune`, the grid `RERANK_GRID` (candidates x alpha x query-token
    weighting) on the TRAIN split (all of it unless `--rerank-train-queries`), where the default is
    chosen; the test split never chooses anything."""
    from jamba_stack.retrieval.rerank import MAXSIM_ALPHA, MAXSIM_WEIGHTING, RERANK_CANDIDATES, MaxSimReranker

    nmax = max(RERANK_GRID["candidates"]) if args.rerank_tune else max(RERANK_CANDIDATES, 20)
    cache = _load_cache(args.rerank_cache)
    ms = MaxSimReranker(retriever.embedder)
    default = (RERANK_CANDIDATES, MAXSIM_ALPHA, MAXSIM_WEIGHTING)
    out: dict[str, Any] = {
        "default": {"candidates": default[0], "alpha": default[1], "weighting": default[2]},
        "reranker": "maxsim (all-MiniLM-L6-v2 token vectors, int8 ONNX)",
    }
    if args.rerank_tune:
        tq, tqrels = load_beir(args.data, "train")
        if args.rerank_train_queries:
            tq = dict(list(tq.items())[: args.rerank_train_queries])
        rows = _maxsim_rows(retriever, tq, nmax, cache)
        _save_cache(args.rerank_cache, cache)
        sub = {q: tqrels[q] for q in tq}
        grid = {}
        for w in RERANK_GRID["weighting"]:
            for n in RERANK_GRID["candidates"]:
                for a in RERANK_GRID["alpha"]:
                    grid[f"{w} top{n} alpha={a}"] = evaluate(_blend_run(rows, a, n, w, ms), sub)["ndcg@10"]
        best = max(grid, key=grid.__getitem__)
        out["train"] = {"queries": len(tq), "ndcg@10": grid, "best": best}
        print(f"[rerank] train ({len(tq)} queries) best {best}: {grid[best]:.4f}", flush=True)
    rows = _maxsim_rows(retriever, queries, nmax, cache)
    _save_cache(args.rerank_cache, cache)
    one = _maxsim_rows(retriever, queries, nmax, cache, one_at_a_time=True)
    _save_cache(args.rerank_cache, cache)
    # int8 dynamic quantization scales activations per batch, so a query's vector depends a little
    # on its batch-mates: both ways of embedding the queries are reported.
    out["test"] = {
        "hybrid": checked(_blend_run(rows, 0.0, 20, "none", ms), qrels),
        "default": checked(_blend_run(rows, default[1], default[0], default[2], ms), qrels),
        "previous (top30, 0.6, idf)": checked(_blend_run(rows, 0.6, 30, "idf", ms), qrels),
        "hybrid, one query at a time": checked(_blend_run(one, 0.0, 20, "none", ms), qrels),
        "default, one query at a time": checked(
            _blend_run(one, default[1], default[0], default[2], ms), qrels
        ),
        "previous, one query at a time": checked(_blend_run(one, 0.6, 30, "idf", ms), qrels),
    }
    ms = MaxSimReranker(retriever.embedder)
    times = []
    for text in list(queries.values())[: min(20, args.latency_queries)]:
        hits = retriever.search(text, RERANK_CANDIDATES)
        t = time.perf_counter()
        ms.rerank(text, hits)
        times.append((time.perf_counter() - t) * 1000)
    out["rerank_latency_ms"] = {
        "p50": percentile(times, 50),
        "p95": percentile(times, 95),
        "queries": len(times),
    }
    print(f"[rerank] {json.dumps({k: v for k, v in out.items() if k != 'train'}, default=str)}", flush=True)
    return out


# ---------------------------------------------------------------- main
