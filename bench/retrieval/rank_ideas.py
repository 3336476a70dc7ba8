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

from bench.retrieval.beir import SCIFACT, load_beir
from jamba_stack.retrieval.metrics import evaluate

BM25_VARIANTS = [(0.9, 0.4), (1.2, 0.75), (0.7, 0.3), (1.2, 0.4), (0.9, 0.6), (1.5, 0.5)]


def precompute(work: Path, split: str, codec: str) -> dict[str, Any]:
    """Per query of `split`: its exact dense cosines and BM25 scores (each variant) over every
    chunk, and its token ids and token vectors in the codec's space; plus the chunks' doc ids,
    dense vectors and stored token vectors (ids, vectors)."""
    import bm25s

    from jamba_stack.retrieval.bm25 import tokenize
    from jamba_stack.retrieval.embeddings import make_embedder
    from jamba_stack.retrieval.store import Store
    from jamba_stack.retrieval.token_store import TokenStore

    data = work / "ours_int8"
    col = Store(data).open("scifact")
    embedder = make_embedder("minilm", cache_dir=work / "models")
    ids, texts, metas = [], [], []
    for a, b, c in col.iter_all():
        ids += a
        texts += b
        metas += c
    emb = np.zeros((len(ids), embedder.dim), dtype=np.float32)
    for i in range(0, len(ids), 2000):
        for j, (c, e) in enumerate(col.get(ids[i : i + 2000], embeddings=True)):
            assert c.id == ids[i + j]
            emb[i + j] = e
    queries, qrels = load_beir(SCIFACT, split)
    qids = list(queries)
    qv = np.zeros((len(qids), embedder.dim), dtype=np.float32)
    qtoks = []
    for i, q in enumerate(qids):
        qv[i], t = embedder.embed_query_tokens(queries[q])
        qtoks.append(t)
    toks_chunks = tokenize(texts)
    qt = [tokenize([queries[q]])[0] for q in qids]
    bm25 = {}
    for k1, b in BM25_VARIANTS:
        r = bm25s.BM25(k1=k1, b=b, method="lucene")
        r.index(toks_chunks, show_progress=False)
        m = np.zeros((len(qids), len(ids)), dtype=np.float32)
        for i, t in enumerate(qt):
            t = [x for x in t if x in r.vocab_dict]
            if t:
                m[i] = r.get_scores(t)
        bm25[(k1, b)] = m
    store = TokenStore.open_existing(data / f"tokens_{codec}")
    assert store is not None, (
        f"no {codec} token store in {data}: run bench.retrieval.scifact --codecs {codec}"
    )
    got = store.get(ids)
    chunk_tok = [(got[c].ids.astype(np.int32), got[c].vecs.astype(np.float16)) for c in ids]
    qproj = [(t.ids.astype(np.int32), store.codec.query(t.vecs).astype(np.float32)) for t in qtoks]
    return {
        "ids": ids,
        "doc": [str(m.get("doc_id")) for m in metas],
        "emb": emb,
        "qids": qids,
        "qrels": qrels,
        "qv": qv,
        "qtok": qproj,
        "bm25": bm25,
        "chunk_tok": chunk_tok,
        "texts": texts,
        "qtexts": [queries[q] for q in qids],
    }


class Ideas:
    """The cached arrays and a memo of MaxSim pieces: per (query, chunk), the best match of each
    query token (n_query_tokens,) and whether the chunk holds that token's id."""

    def __init__(self, c: dict[str, Any]) -> None:
        self.c = c
        self.dense = c["qv"] @ c["emb"].T  # (queries, chunks)
        self.doc = np.array(c["doc"])
        self.memo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._bm: Any = None
        self.chunks_of: dict[str, np.ndarray] = {}
        for i, d in enumerate(c["doc"]):
            self.chunks_of.setdefault(d, []).append(i)  # type: ignore[attr-defined]
        self.chunks_of = {d: np.array(v) for d, v in self.chunks_of.items()}
        df = np.zeros(1 + max(int(t[0].max(initial=0)) for t in c["chunk_tok"]), dtype=np.float32)
        for ids, _ in c["chunk_tok"]:
            df[np.unique(ids)] += 1
        n = len(c["chunk_tok"])
        self.global_idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)

    def rm3_scores(self, qi: int, fb: list[int], terms: int) -> np.ndarray:
        """BM25 scores (over every chunk) of the `terms` stemmed terms with the highest tf * idf
        in the feedback chunks `fb`, each term once (the query's own terms left out)."""
        if self._bm is None:
            import bm25s

            from jamba_stack.retrieval.bm25 import tokenize

            toks = tokenize(self.c["texts"])
            self._toks = toks
            self._bm = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
            self._bm.index(toks, show_progress=False)
            df: dict[str, int] = {}
            for t in toks:
                for w in set(t):
                    df[w] = df.get(w, 0) + 1
            n = len(toks)
            self._idf = {w: np.log(1 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}
            self._qterms = [set(tokenize([q])[0]) for q in self.c["qtexts"]]
        tf: dict[str, float] = {}
        for c in fb:
            for w in self._toks[c]:
                tf[w] = tf.get(w, 0.0) + 1.0 / len(self._toks[c])
        cand = [w for w in tf if w not in self._qterms[qi] and w in self._bm.vocab_dict]
        top = sorted(cand, key=lambda w: -tf[w] * self._idf[w])[:terms]
        return self._bm.get_scores(top).astype(np.float32) if top else np.zeros(len(self._toks), np.float32)

    def document_bm25(self, qi: int) -> dict[str, float]:
        """BM25 scores of the query over whole documents (title + text of the corpus), by doc id."""
        if getattr(self, "_doc_bm", None) is None:
            import bm25s

            from jamba_stack.retrieval.bm25 import tokenize

            docs = self.c["corpus"]
            self._doc_ids = [d["_id"] for d in docs]
            self._doc_bm = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
            self._doc_bm.index(tokenize([d["title"] + " " + d["text"] for d in docs]), show_progress=False)
        from jamba_stack.retrieval.bm25 import tokenize

        t = [w for w in tokenize([self.c["qtexts"][qi]])[0] if w in self._doc_bm.vocab_dict]
        if not t:
            return {}
        sc = self._doc_bm.get_scores(t)
        return dict(zip(self._doc_ids, sc.tolist(), strict=True))

    def maxsim_parts(self, qi: int, cands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best, present), each (n_query_tokens, len(cands))."""
        qids, q = self.c["qtok"][qi]
        cols = []
        for ci in cands:
            key = (qi, int(ci))
            if key not in self.memo:
                pids, pv = self.c["chunk_tok"][ci]
                best = (q @ pv.astype(np.float32).T).max(axis=1)
                present = np.isin(qids, pids)
                self.memo[key] = (best, present)
            cols.append(self.memo[key])
        return np.stack([b for b, _ in cols], axis=1), np.stack([p for _, p in cols], axis=1)


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


LTR_FEATURES = (
    "fused",  # the default's first-stage score: the document's best fused chunk
    "dense_max",  # best cosine of the query to any of the document's chunks
    "dense_centroid",  # cosine to the mean of its chunks' vectors
    "bm25_max",
    "bm25_sum",  # over all the document's chunks
    "maxsim_idf",  # MaxSim over all the document's tokens, local IDF over the M documents
    "maxsim",  # the same, unweighted
    "maxsim_best_chunk",
    "maxsim_top3",  # each query token's mean of its 3 best matches
    "maxsim_reverse",  # each document token's best query match, averaged over the document
    "position",  # first-stage rank / M
    "bm25_document",  # BM25 (k1 0.9, b 0.4) over title + abstract as one text: needs a document index
    "rocchio_dense_max",  # dense max after Rocchio (fused top 5, beta 0.5): a second dense query
)
CHEAP = LTR_FEATURES[:11]
"""What the stored vectors and the chunk-level indexes give at query time, with no new index and
no second retrieval."""


def ltr_features(ix: Ideas, qi: int, m: int) -> tuple[list[str], np.ndarray]:
    """The first stage's top `m` documents of query `qi` and their `LTR_FEATURES` (m, n_features),
    each min-max normalized over the m documents."""
    cands, f = ranking(ix, qi, BASE | {"_chunks": "fused_scores"})  # type: ignore[misc]
    first: dict[str, float] = {}
    for ch, v in zip(cands.tolist(), f.tolist(), strict=True):
        first.setdefault(str(ix.doc[ch]), v)
    names = list(first)[:m]
    c = ix.c
    dense, bm = ix.dense[qi], c["bm25"][(0.9, 0.4)][qi]
    qids, q = c["qtok"][qi]
    fb = np.array(cands[:5])
    v = c["qv"][qi] + 0.5 * c["emb"][fb].mean(axis=0)
    rocchio = (v / np.linalg.norm(v)) @ c["emb"].T
    bdoc = ix.document_bm25(qi)
    x = np.zeros((len(names), len(LTR_FEATURES)), dtype=np.float32)
    best, present, chunk_parts = [], [], []
    for j, d in enumerate(names):
        chs = ix.chunks_of[d]
        pv = np.concatenate([c["chunk_tok"][ch][1] for ch in chs]).astype(np.float32)
        pids = np.concatenate([c["chunk_tok"][ch][0] for ch in chs])
        sim = q @ pv.T  # (n_query_tokens, the document's tokens)
        best.append(sim.max(axis=1))
        present.append(np.isin(qids, pids))
        chunk_parts.append(ix.maxsim_parts(qi, chs))
        cent = c["emb"][chs].mean(axis=0)
        x[j, 0] = first[d]
        x[j, 1] = dense[chs].max()
        x[j, 2] = c["qv"][qi] @ cent / np.linalg.norm(cent)
        x[j, 3] = bm[chs].max()
        x[j, 4] = bm[chs].sum()
        x[j, 8] = np.sort(sim, axis=1)[:, -3:].mean()
        x[j, 9] = sim.max(axis=0).mean()
        x[j, 10] = j / m
        x[j, 11] = bdoc.get(d, 0.0)
        x[j, 12] = rocchio[chs].max()
    b, p = np.stack(best, axis=1), np.stack(present, axis=1)
    w = idf_weights(p)
    x[:, 5] = (w / w.sum()) @ b
    x[:, 6] = b.mean(axis=0)
    wa = idf_weights(np.concatenate([pp for _, pp in chunk_parts], axis=1))
    x[:, 7] = [((wa / wa.sum()) @ bb).max() for bb, _ in chunk_parts]
    for k in range(x.shape[1]):
        x[:, k] = norm(x[:, k], "minmax")
    return names, x


def ltr_cv(ix: Ideas, m: int = 40, folds: int = 5) -> dict[str, Any]:
    """`folds`-fold cross-validation (split by query) of learned rankers over `LTR_FEATURES` of
    the first stage's top `m` documents: logistic regression and gradient-boosted trees
    (scikit-learn), pointwise on relevant / not; the other documents keep their fused order."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from jamba_stack.retrieval.metrics import ndcg_at_k, recall_at_k

    qrels, qids = ix.c["qrels"], ix.c["qids"]
    rows = []
    for qi, q in enumerate(qids):
        names, x = ltr_features(ix, qi, m)
        rest = [d for d in ranking(ix, qi, BASE | {"alpha": 0.0}) if d not in set(names)]
        rows.append((q, names, x, [int(qrels[q].get(d, 0) > 0) for d in names], rest))
    split = np.array_split(np.random.default_rng(0).permutation(len(rows)), folds)
    models = {
        "logistic regression": lambda: LogisticRegression(C=1.0, max_iter=2000),
        "gradient-boosted trees": lambda: HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40, random_state=0
        ),
    }
    out = {}
    for subset, cols in (("all features", LTR_FEATURES), ("cheap features", CHEAP)):
        ci = [LTR_FEATURES.index(f) for f in cols]
        for name, make in models.items():
            nd = r10 = 0.0
            for k in range(folds):
                train = np.concatenate([split[j] for j in range(folds) if j != k])
                model = make().fit(
                    np.concatenate([rows[i][2][:, ci] for i in train]),
                    np.concatenate([rows[i][3] for i in train]),
                )
                for i in split[k]:
                    q, names, x, _, rest = rows[i]
                    o = np.argsort(-model.predict_proba(x[:, ci])[:, 1], kind="stable")
                    ranked = [names[j] for j in o] + rest
                    nd += ndcg_at_k(ranked, qrels[q], 10)
                    r10 += recall_at_k(ranked, qrels[q], 10)
            key = f"{name}, {subset}, top {m}, {folds}-fold CV"
            out[key] = {"ndcg@10": round(nd / len(rows), 4), "recall@10": round(r10 / len(rows), 4)}
            print(f"{key:<60} {out[key]['ndcg@10']:.4f} {out[key]['recall@10']:.4f}", flush=True)
    return out


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
    if "texts" not in c:  # a cache from before the texts were kept
        from jamba_stack.retrieval.store import Store

        col = Store(args.work / "ours_int8").open("scifact")
        texts = dict(zip(*[sum((list(x[i]) for x in col.iter_all()), []) for i in (0, 1)], strict=True))
        c["texts"] = [texts[i] for i in c["ids"]]
        queries, _ = load_beir(SCIFACT, args.split)
        c["qtexts"] = [queries[q] for q in c["qids"]]
        cache.write_bytes(pickle.dumps(c))
    if args.ltr:
        if "corpus" not in c:
            c["corpus"] = [json.loads(x) for x in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
        res = ltr_cv(Ideas(c))
        out = args.out or args.work / f"rank_ideas_{args.split}.json"
        prev = json.loads(out.read_text()) if out.is_file() else {}
        out.write_text(json.dumps(prev | res, indent=2))
        return
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
