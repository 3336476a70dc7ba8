"""What `bench.retrieval.scifact` measures of one retriever: storage per chunk, latency one query at
a time, quality (nDCG@10, R@10, R@100), and token stores of each codec copied from one ingest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.common.stats import percentile
from bench.retrieval.beir import checked
from jamba_stack.retrieval.search import Retriever


def storage(data: Path, chunks: int) -> dict[str, Any]:
    """Bytes on disk per chunk: Chroma's folder (vectors, HNSW, texts, metadata, full-text index),
    BM25's, and the stored token vectors (the SQLite file, and its ids + codes alone)."""
    from jamba_stack.retrieval.token_store import STORE_FILE, TokenStore

    def size(p: Path) -> int:
        return (
            sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir()
            else (p.stat().st_size if p.exists() else 0)
        )

    state = next((data / "retrieval").glob("*/scifact"))
    out = {
        "chroma_bytes_per_chunk": size(data / "chroma") / chunks,
        "bm25_bytes_per_chunk": size(state / "bm25") / chunks,
        "tokens_file_bytes_per_chunk": sum(size(f) for f in state.glob(STORE_FILE + "*")) / chunks,
    }
    store = TokenStore.open_existing(state)
    if store is not None:
        st = store.stats()
        out |= {
            "token_codec": store.codec.name,
            "tokens_per_chunk": st.tokens / max(1, st.chunks),
            "token_codes_bytes_per_chunk": st.bytes / max(1, st.chunks),
        }
        store.close()
    return out


def latency(
    retriever: Retriever, texts: list[str], warmup: list[str] | None = None, **kwargs: Any
) -> dict[str, float]:
    """p50/p95 ms of `search(q, 10)` one query at a time; `warmup`: other queries run first,
    untimed (the store's files come into the page cache as a running server's would be)."""
    for q in warmup or []:
        retriever.search(q, 10, **kwargs)
    times = []
    for q in texts:
        t = time.perf_counter()
        retriever.search(q, 10, **kwargs)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": percentile(times, 50), "p95": percentile(times, 95), "queries": len(times)}


def quality(
    retriever: Retriever, qids: list[str], texts: list[str], qrels: dict, **kwargs: Any
) -> dict[str, float]:
    """nDCG@10 and R@10 from the top 10 documents (k=10, what `search --k 10 --unique-docs` returns,
    so a reranker sees the candidates it does in use), R@100 from k=100; queries one at a time
    unless a kwarg says otherwise (their vectors embedded alone, as `search` and `ask` do)."""
    top10 = [retriever.search(t, 10, unique_docs=True, **kwargs) for t in texts]
    top100 = [retriever.search(t, 100, unique_docs=True, **kwargs) for t in texts]
    run = {
        q: [h.doc_id for h in a] + [h.doc_id for h in b if h.doc_id not in {x.doc_id for x in a}]
        for q, a, b in zip(qids, top10, top100, strict=True)
    }
    m = checked(run, qrels)
    m["recall@10"] = checked({q: [h.doc_id for h in a] for q, a in zip(qids, top10, strict=True)}, qrels)[
        "recall@10"
    ]
    return m


def codec_stores(src: Path, data: Path, codecs: list[str], dim: int) -> dict[str, tuple[Any, dict]]:
    """Per codec, its `TokenStore` of the collection's chunks and what making it cost: the store
    ingest wrote (`src`, a state dir) where its codec is that one, else a copy of its rows
    re-encoded in ingest's order (fitted as ingest fits: on the first `FIT_TOKENS` tokens), so one
    ingest with f16 (exact to float16) serves every codec. Copies are kept in `data` between runs."""
    from jamba_stack.retrieval.token_store import STORE_FILE, TokenStore

    base = TokenStore.open_existing(src)
    if base is None:
        return {}
    out: dict[str, tuple[Any, dict]] = {}
    for codec in codecs:
        if codec == base.codec.name:
            out[codec] = (base, {"copied": False, "file_bytes": (src / STORE_FILE).stat().st_size})
            continue
        d = data / f"tokens_{codec}"
        meta = d / "copy.json"
        if not meta.is_file():
            for f in d.glob(STORE_FILE + "*"):
                f.unlink()
            t = time.perf_counter()
            dst = TokenStore.open(d, dim, codec)
            ids: list[str] = []
            vecs: list[Any] = []
            for cid, tv in base.items():
                ids.append(cid)
                vecs.append(tv)
                if len(ids) == 64:  # ingest's batch: the fit happens where ingest's would
                    dst.put(ids, vecs)
                    ids, vecs = [], []
            if ids:
                dst.put(ids, vecs)
            dst.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            dst.close()
            meta.write_text(json.dumps({"copy_s": time.perf_counter() - t}))
        store = TokenStore.open_existing(d)
        assert store is not None and store.count() == base.count(), f"{codec}: every chunk has its row"
        info = json.loads(meta.read_text()) | {
            "copied": True,
            "file_bytes": sum(f.stat().st_size for f in d.glob(STORE_FILE + "*")),
        }
        out[codec] = (store, info)
    return out
