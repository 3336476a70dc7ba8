"""What `bench.retrieval.rank_ideas` re-ranks: each query's exact dense cosines and BM25 scores
over every chunk of one SciFact ingest, and its MaxSim pieces against the stored token vectors,
computed once (`precompute`) and read through `Ideas`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.retrieval.beir import SCIFACT, load_beir
from jamba_stack.retrieval.bm25 import BM25_PARAMS

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
        r = bm25s.BM25(k1=k1, b=b, method=BM25_PARAMS["method"])
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
        self._doc_bm: Any = None
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
            self._bm = bm25s.BM25(**BM25_PARAMS)
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
        if self._doc_bm is None:
            import bm25s

            from jamba_stack.retrieval.bm25 import tokenize

            docs = self.c["corpus"]
            self._doc_ids = [d["_id"] for d in docs]
            self._doc_bm = bm25s.BM25(**BM25_PARAMS)
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
