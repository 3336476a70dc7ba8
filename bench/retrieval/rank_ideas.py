"""Cheap query-time ranking ideas on one SciFact ingest, scored on a split (choose on TRAIN only):
score normalization before fusion and blend, three-way blends of BM25, dense and MaxSim, RRF,
document-level aggregation of chunks and document-level MaxSim, BM25 k1/b, Rocchio feedback on
the dense query vector, RM3 expansion of the BM25 query and MaxSim query-token weighting. Everything is computed once per query from the stores that
`bench.retrieval.scifact --work W` ingested (the collection, BM25's tokenization, the pca128x4
token vectors), then each setting is a re-ranking of cached arrays, so a cell costs seconds.

    python -m bench.retrieval.rank_ideas --work W --split train
    python -m bench.retrieval.rank_ideas --work W --ltr    # learned rankers, cross-validated on train

Dense scores are exact cosines over every chunk's stored vector, not Chroma's HNSW: on one
ingest the baseline row (the default of `search`) read nDCG@10 0.7499 where the bench's own grid
(HNSW) read 0.7488, so compare rows with each other, not with the bench. docs/retrieval.md has
the grid's numbers.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.retrieval.beir import SCIFACT
from bench.retrieval.rank_cache import BM25_VARIANTS, Ideas, precompute
from jamba_stack.retrieval.metrics import evaluate


def norm(x: np.ndarray, how: str) -> np.ndarray:
    if len(x) == 0:
        return x
    if how == "minmax":
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)
    if how == "z":
        sd = x.std()
        return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    if how == "rank":  # 1 / (k + rank), k = 10
        r = np.empty(len(x))
        r[np.argsort(-x, kind="stable")] = np.arange(1, len(x) + 1)
        return 1.0 / (10 + r)
    if how == "max":  # divide by the best (scores >= 0)
        m = x.max()
        return x / m if m > 0 else np.zeros_like(x)
    raise ValueError(how)


def idf_weights(present: np.ndarray) -> np.ndarray:
    n = present.shape[1]
    df = present.sum(axis=1).astype(np.float32)
    return np.log1p((n - df + 0.5) / (df + 0.5))


def ranking(ix: Ideas, qi: int, s: dict[str, Any]) -> list[str]:
    """One query's document ranking under setting `s` (see `BASE` for the keys)."""
    bm = ix.c["bm25"][tuple(s["bm25"])][qi]
    dense = ix.dense[qi]
    if s["prf_k"] or s["rm3_k"]:
        # Feedback from the first pass's top chunks: fused (prf_from "fused") or reranked ("final").
        stage = {"_chunks": "fused"} if s["prf_from"] == "fused" else {"_chunks": "final"}
        first = ranking(ix, qi, s | {"prf_k": 0, "rm3_k": 0} | stage)
    if s["prf_k"]:
        # Rocchio on the dense query vector: the mean of the feedback chunks' vectors added.
        top = np.array(first[: s["prf_k"]])
        fb = ix.c["emb"][top]
        if s["prf_weighted"]:
            fb = fb * (1.0 / np.arange(1, len(top) + 1))[:, None]
        v = ix.c["qv"][qi] + s["prf_beta"] * fb.sum(axis=0) / (
            (1.0 / np.arange(1, len(top) + 1)).sum() if s["prf_weighted"] else len(top)
        )
        v /= np.linalg.norm(v)
        dense = s["prf_mix"] * (v @ ix.c["emb"].T) + (1 - s["prf_mix"]) * dense
    if s["rm3_k"]:
        bm = bm + s["rm3_w"] * ix.rm3_scores(qi, first[: s["rm3_k"]], s["rm3_terms"])
    n = s["n"]
    dtop = np.argpartition(-dense, n)[:n]
    dtop = dtop[np.argsort(-dense[dtop], kind="stable")]
    btop = np.argpartition(-bm, n)[:n]
    btop = btop[np.argsort(-bm[btop], kind="stable")]
    btop = btop[bm[btop] > 0]
    cands = np.array(list(dict.fromkeys([*dtop.tolist(), *btop.tolist()])))
    wd = s["w_dense"]
    if s["fusion"] == "rrf":
        f = np.zeros(len(cands))
        pos = {c: i for i, c in enumerate(cands)}
        for lst, w in ((dtop, wd), (btop, 1 - wd)):
            for r, c in enumerate(lst, 1):
                f[pos[c]] += w / (s["rrf_k"] + r)
    else:
        how = s["fnorm"]
        if s["fill"]:  # every candidate's real score from both retrievers
            d, b = dense[cands], bm[cands]
            f = wd * norm(d, how) + (1 - wd) * norm(b, how)
        else:  # the product: a retriever's score over its own list, 0 where it did not return the chunk
            dn = dict(zip(dtop.tolist(), norm(dense[dtop], how), strict=True))
            bn = dict(zip(btop.tolist(), norm(bm[btop], how), strict=True)) if len(btop) else {}
            lo_d = min(dn.values()) if how == "z" else 0.0
            lo_b = min(bn.values()) if (how == "z" and bn) else 0.0
            f = np.array([wd * dn.get(c, lo_d) + (1 - wd) * bn.get(c, lo_b) for c in cands])
    order = np.argsort(-f, kind="stable")
    cands, f = cands[order], f[order]
    if s["doc"] and not s.get("_chunks"):
        return doc_ranking(ix, qi, s, cands, f, dense, bm)
    if s.get("_chunks") == "fused":
        return cands.tolist()
    if s.get("_chunks") == "fused_scores":
        return cands, f  # type: ignore[return-value]
    m = s["rerank_n"]
    head, fh = cands[:m], f[:m]
    a = s["alpha"]
    if a > 0 or s["three"]:
        best, present = ix.maxsim_parts(qi, head)
        if s["qweight"] == "idf":
            w = idf_weights(present)
        elif s["qweight"] == "idf2":
            w = idf_weights(present) ** 2
        else:
            w = np.ones(best.shape[0], dtype=np.float32)
        ms = (w / max(w.sum(), 1e-12)) @ best
        bh = s["bnorm"]
        if s["three"]:
            td, tb, tm = s["three"]
            final = td * norm(dense[head], bh) + tb * norm(bm[head], bh) + tm * norm(ms, bh)
        elif s["blend"] == "rrf":
            final = a * norm(ms, "rank") + (1 - a) * norm(fh, "rank")
        else:
            final = a * norm(ms, bh) + (1 - a) * norm(fh, bh)
        o = np.argsort(-final, kind="stable")
        head, final = head[o], final[o]
    else:
        final = fh
    chunks = [*head.tolist(), *cands[m:].tolist()]
    if s.get("_chunks") == "final":
        return chunks
    if s["agg"] == "max":
        return list(dict.fromkeys(ix.doc[chunks].tolist()))[:100]
    # sum (or a discounted sum) of a document's chunk scores among the reranked head
    tot: dict[str, float] = {}
    sc = norm(final, "minmax") if len(final) else final
    for c, v in zip(head.tolist(), sc, strict=True):
        d = ix.doc[c]
        tot[d] = tot.get(d, 0.0) + (v if d not in tot else s["agg_w"] * v)
    docs = sorted(tot, key=lambda d: -tot[d])
    return list(dict.fromkeys([*docs, *ix.doc[cands[m:]].tolist()]))[:100]


def doc_ranking(
    ix: Ideas, qi: int, s: dict[str, Any], cands: np.ndarray, f: np.ndarray, dense: np.ndarray, bm: np.ndarray
) -> list[str]:
    """Rerank documents, not chunks: a document's first-stage score is its best candidate chunk's
    fused score (`doc_first` "max"), or the convex fusion of its best dense and best BM25 chunk
    over all its chunks ("fill"); the top `rerank_n` documents get MaxSim over all their chunks'
    tokens (each query token's best match anywhere in the document, `doc` "tokens"), or the best
    of their chunks' MaxSim ("chunkmax")."""
    docs: dict[str, float] = {}
    for c, v in zip(cands.tolist(), f.tolist(), strict=True):
        d = ix.doc[c]
        if d not in docs:
            docs[d] = v
    names = list(docs)
    first = np.array([docs[d] for d in names], dtype=np.float32)
    if s["doc_first"] == "fill":
        dd = np.array([dense[ix.chunks_of[d]].max() for d in names])
        bb = np.array([bm[ix.chunks_of[d]].max() for d in names])
        first = s["w_dense"] * norm(dd, "minmax") + (1 - s["w_dense"]) * norm(bb, "minmax")
        o = np.argsort(-first, kind="stable")
        names, first = [names[i] for i in o], first[o]
    m = s["rerank_n"]
    head, fh = names[:m], first[:m]
    if s["alpha"] > 0:
        parts = [ix.maxsim_parts(qi, ix.chunks_of[d]) for d in head]
        if s["doc"] == "tokens":
            best = np.stack([b.max(axis=1) for b, _ in parts], axis=1)
            present = np.stack([p.any(axis=1) for _, p in parts], axis=1)
            w = idf_weights(present) if s["qweight"] == "idf" else np.ones(best.shape[0], np.float32)
            if s["qweight"] == "global":  # BM25's idf of the wordpiece over every chunk
                w = ix.global_idf[ix.c["qtok"][qi][0]]
            if s["tok_norm"] == "center":  # each query token's match relative to its mean over the docs
                best = best - best.mean(axis=1, keepdims=True)
            elif s["tok_norm"] == "z":
                best = (best - best.mean(axis=1, keepdims=True)) / np.maximum(
                    best.std(axis=1, keepdims=True), 1e-6
                )
            elif s["tok_norm"] == "zidf":  # z per token, no idf
                best = (best - best.mean(axis=1, keepdims=True)) / np.maximum(
                    best.std(axis=1, keepdims=True), 1e-6
                )
                w = np.ones(best.shape[0], np.float32)
            ms = (w / max(w.sum(), 1e-12)) @ best
        else:
            allp = np.concatenate([p for _, p in parts], axis=1)
            w = idf_weights(allp) if s["qweight"] == "idf" else np.ones(allp.shape[0], np.float32)
            w = w / max(w.sum(), 1e-12)
            ms = np.array([(w @ b).max() for b, _ in parts])
        if s["len_pen"]:  # more tokens, more chances of a good match: ms - beta * ln(tokens)
            ms = ms - s["len_pen"] * np.log(
                [sum(len(ix.c["chunk_tok"][c][0]) for c in ix.chunks_of[d]) for d in head]
            )
        final = s["alpha"] * norm(ms, s["bnorm"]) + (1 - s["alpha"]) * norm(fh, s["bnorm"])
        if s["prop"]:
            # Score propagation (cluster hypothesis): each document gains lam * its mean cosine
            # (documents' mean chunk vectors) to the k best-scored documents, min-max normalized.
            lam, k = s["prop"]
            v = np.stack([ix.c["emb"][ix.chunks_of[d]].mean(axis=0) for d in head])
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            sim = v @ v.T
            np.fill_diagonal(sim, 0.0)
            top = np.argsort(-final, kind="stable")[:k]
            final = final + lam * norm(sim[:, top] @ final[top] / k, "minmax")
        o = np.argsort(-final, kind="stable")
        head = [head[i] for i in o]
    return [*head, *names[m:]][:100]


BASE: dict[str, Any] = {
    "bm25": (0.9, 0.4),
    "n": 50,
    "fusion": "convex",
    "fnorm": "minmax",
    "fill": False,
    "w_dense": 0.5,
    "rrf_k": 10,
    "rerank_n": 30,
    "alpha": 0.5,
    "qweight": "idf",
    "bnorm": "minmax",
    "blend": "convex",
    "three": None,
    "agg": "max",
    "agg_w": 1.0,
    "prf_k": 0,
    "prf_beta": 0.0,
    "prf_from": "fused",
    "prf_weighted": False,
    "prf_mix": 1.0,
    "doc": "",
    "doc_first": "max",
    "tok_norm": "",
    "len_pen": 0.0,
    "prop": None,
    "rm3_k": 0,
    "rm3_terms": 10,
    "rm3_w": 0.3,
}


def score(ix: Ideas, s: dict[str, Any]) -> dict[str, float]:
    run = {q: ranking(ix, i, s) for i, q in enumerate(ix.c["qids"])}
    m = evaluate(run, ix.c["qrels"])
    return {"ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4)}


def grid(ix: Ideas, cells: list[tuple[str, dict[str, Any]]], log: Callable[[str], None]) -> dict[str, Any]:
    out = {}
    for name, over in cells:
        t = time.perf_counter()
        out[name] = score(ix, BASE | over)
        log(
            f"{name:<60} {out[name]['ndcg@10']:.4f} {out[name]['recall@10']:.4f}  ({time.perf_counter() - t:.0f} s)"
        )
    return out


def cells() -> list[tuple[str, dict[str, Any]]]:
    c: list[tuple[str, dict[str, Any]]] = [
        ("baseline (search default)", {}),
        ("hybrid, no rerank", {"alpha": 0.0}),
    ]
    for fn in ("z", "rank", "max"):
        c.append((f"fusion norm {fn}", {"fnorm": fn}))
    c.append(("fusion fill-in (real scores for both)", {"fill": True}))
    c.append(("fusion fill-in z", {"fill": True, "fnorm": "z"}))
    for bn in ("z", "rank", "max"):
        c.append((f"blend norm {bn}", {"bnorm": bn}))
    for wd in (0.4, 0.6):
        c.append((f"w_dense {wd}", {"w_dense": wd}))
    for a in (0.4, 0.6):
        c.append((f"alpha {a}", {"alpha": a}))
    for m in (20, 40, 50):
        c.append((f"rerank top {m}", {"rerank_n": m}))
    c.append(("candidates 100 per retriever", {"n": 100}))
    c.append(("candidates 30 per retriever", {"n": 30}))
    for qw in ("none", "idf2"):
        c.append((f"query tokens {qw}", {"qweight": qw}))
    for k in (10, 30, 60):
        c.append((f"fusion rrf k={k}", {"fusion": "rrf", "rrf_k": k}))
    c.append(("blend rrf", {"blend": "rrf"}))
    for three in ((0.25, 0.25, 0.5), (0.2, 0.3, 0.5), (0.3, 0.2, 0.5), (0.3, 0.3, 0.4), (0.2, 0.2, 0.6)):
        c.append((f"three-way dense/bm25/maxsim {three}", {"three": three}))
    c.append(("three-way z (0.25,0.25,0.5)", {"three": (0.25, 0.25, 0.5), "bnorm": "z"}))
    for aw in (1.0, 0.5, 0.25):
        c.append((f"doc agg sum (next chunks x{aw})", {"agg": "sum", "agg_w": aw}))
    for v in BM25_VARIANTS[1:]:
        c.append((f"bm25 k1={v[0]} b={v[1]}", {"bm25": v}))
    for k, beta in ((3, 0.3), (5, 0.3), (5, 0.5), (10, 0.5), (3, 0.6), (10, 1.0), (10, 0.7)):
        c.append((f"rocchio dense top{k} beta={beta}", {"prf_k": k, "prf_beta": beta}))
    for k, beta in ((3, 0.5), (5, 0.5), (10, 0.5), (10, 1.0)):
        c.append(
            (
                f"rocchio from the reranked top{k} beta={beta}",
                {"prf_k": k, "prf_beta": beta, "prf_from": "final"},
            )
        )
    for k, terms, w in ((5, 10, 0.3), (5, 10, 0.5), (10, 20, 0.3)):
        c.append((f"rm3 bm25 top{k} +{terms} terms w={w}", {"rm3_k": k, "rm3_terms": terms, "rm3_w": w}))
    doc = {"doc": "tokens"}
    c.append(("doc-level MaxSim (all chunks' tokens) top30 docs", doc))
    for m in (20, 40):
        c.append((f"doc-level MaxSim top{m} docs", doc | {"rerank_n": m}))
    for a in (0.4, 0.45, 0.6):
        c.append((f"doc-level MaxSim alpha {a}", doc | {"alpha": a}))
    c.append(
        (
            "doc-level MaxSim top40 alpha 0.45, 100 per retriever",
            doc | {"rerank_n": 40, "alpha": 0.45, "n": 100},
        )
    )
    c.append(("doc-level, best chunk's MaxSim", {"doc": "chunkmax"}))
    c.append(("doc-level, first stage from all chunks (fill)", doc | {"doc_first": "fill"}))
    c.append(("doc-level, global wordpiece idf", doc | {"qweight": "global"}))
    c.append(("doc-level, query tokens z-scored over the docs", doc | {"tok_norm": "z"}))
    for beta in (0.01, 0.02):
        c.append((f"doc-level, length penalty {beta}", doc | {"len_pen": beta}))
    for lam, k in ((0.1, 3), (0.1, 10), (0.2, 10)):
        c.append((f"doc-level, score propagation lam={lam} k={k}", doc | {"prop": (lam, k)}))
    c.append(("doc-level + rocchio top10 beta=0.7", doc | {"prf_k": 10, "prf_beta": 0.7}))
    c.append(("doc-level + rocchio top5 beta=0.5", doc | {"prf_k": 5, "prf_beta": 0.5}))
    return c


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="the --work folder of bench.retrieval.scifact")
    ap.add_argument("--split", default="train")
    ap.add_argument("--codec", default="pca128x4")
    ap.add_argument(
        "--cells", default="", help="a JSON list of [name, overrides] to score instead of the grid"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON of the scores (default: beside the cache)")
    ap.add_argument(
        "--ltr", action="store_true", help="cross-validate learned rankers (scikit-learn) instead of the grid"
    )
    args = ap.parse_args()
    cache = args.work / f"rank_ideas_{args.split}_{args.codec}.pkl"
    if cache.is_file():
        c = pickle.loads(cache.read_bytes())
    else:
        t = time.perf_counter()
        c = precompute(args.work, args.split, args.codec)
        cache.write_bytes(pickle.dumps(c))
        print(f"precomputed in {time.perf_counter() - t:.0f} s", flush=True)
    if args.ltr:
        if "corpus" not in c:
            c["corpus"] = [json.loads(x) for x in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
        from bench.retrieval.rank_learned import ltr_cv

        res = ltr_cv(Ideas(c))
    else:
        todo = (
            [
                (n, {k: tuple(v) if isinstance(v, list) else v for k, v in o.items()})
                for n, o in json.loads(args.cells)
            ]
            if args.cells
            else cells()
        )
        res = grid(Ideas(c), todo, lambda s: print(s, flush=True))
    out = args.out or args.work / f"rank_ideas_{args.split}.json"
    prev = json.loads(out.read_text()) if out.is_file() else {}
    out.write_text(json.dumps(prev | res, indent=2))


if __name__ == "__main__":
    main()
