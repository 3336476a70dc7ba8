"""Learned rankers over the signals `bench.retrieval.rank_ideas` caches: features of the first
stage's top documents, and a cross-validation by query (`python -m bench.retrieval.rank_ideas
--work W --ltr`). A bench finding only: the product ranks without a fitted model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.retrieval.rank_cache import Ideas
from bench.retrieval.rank_ideas import BASE, idf_weights, norm, ranking

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
