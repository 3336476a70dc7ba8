"""`bench.retrieval.scifact`'s scale row: the corpus's chunks repeated to ~100K with changed ids
(embeddings reused), the write + BM25 time and query p50/p95."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.retrieval.measure import latency
from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.ingest import rebuild_bm25
from jamba_stack.retrieval.search import Retriever
from jamba_stack.retrieval.store import Store

SCALE_WARMUP_QUERIES = 50


def run_scale(
    src: Retriever,
    target: int,
    work: Path,
    embedder: Embedder,
    queries: dict[str, str],
    args: argparse.Namespace,
    tokens: Any = None,
) -> dict[str, Any]:
    """~`target` chunks: the corpus's chunks repeated with new ids (and doc ids), embeddings reused."""
    col = src.collection
    ids, embs, docs, metas = [], [], [], []
    offset = 0
    while True:
        r = col.chroma.get(include=["embeddings", "documents", "metadatas"], limit=5000, offset=offset)
        if not r["ids"]:
            break
        ids += r["ids"]
        embs.append(np.asarray(r["embeddings"], dtype=np.float32))
        docs += r["documents"]
        metas += r["metadatas"]
        offset += len(r["ids"])
    base = np.concatenate(embs)
    reps = math.ceil(target / len(ids))
    store = Store(work / "scale")
    big = store.open(
        "scale", embedder_name=embedder.name, dim=embedder.dim, backend=embedder.backend, create=True
    )
    t = time.perf_counter()
    for rep in range(reps):
        new_ids = [f"{i}~{rep}" for i in ids]
        new_meta = [m | {"doc_id": f"{m.get('doc_id')}~{rep}"} for m in metas]
        big.upsert(new_ids, base, docs, new_meta)
        print(f"[scale] wrote copy {rep + 1}/{reps}", flush=True)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    bm25 = rebuild_bm25(big)
    bm25_s = time.perf_counter() - t
    n = big.count()
    retriever = Retriever(big, embedder, bm25)
    texts = list(queries.values())[: args.latency_queries]
    # Warmed on other queries: the numbers are a running server's, not a store just written to disk
    # (a cold first pass reads the index and token pages from disk: 30+ ms a query at 110K chunks).
    warm = list(queries.values())[args.latency_queries :][:SCALE_WARMUP_QUERIES]
    lat = {"hybrid": latency(retriever, texts, warm, rerank=False)}
    if tokens is not None:
        # The token rows repeated under the new ids (same codes), as an ingest of the copies would store them.
        from jamba_stack.retrieval.rerank import MaxSimReranker
        from jamba_stack.retrieval.token_store import TokenStore

        dst = TokenStore.open(big.state_dir, embedder.dim, tokens.target.name)
        dst.db.execute("ATTACH DATABASE ? AS src", (str(tokens.path),))
        dst.db.execute("INSERT OR REPLACE INTO meta SELECT * FROM src.meta")
        for rep in range(reps):
            dst.db.execute(
                "INSERT OR REPLACE INTO tokens SELECT id || ?, n, width, ids, codes, kind FROM src.tokens",
                (f"~{rep}",),
            )
        dst.db.execute("DETACH DATABASE src")
        dst = TokenStore.open_existing(big.state_dir)
        assert dst is not None and dst.count() == n, "every copied chunk has its token row"
        name = f"hybrid + MaxSim, stored {dst.codec.name} (default of search and ask)"
        lat[name] = latency(retriever, texts, warm, rerank=MaxSimReranker(embedder, tokens=dst))
    chunks_per_s = args._chunks_per_s
    out = {
        "chunks": n,
        "copies": reps,
        "write_s": write_s,
        "bm25_build_s": bm25_s,
        "embedding_estimate_s": n / chunks_per_s if chunks_per_s else None,
        "ingest_estimate_s": write_s + bm25_s + (n / chunks_per_s if chunks_per_s else 0.0),
        "latency_ms": lat,
        "hybrid_latency_ms": lat["hybrid"],
        "warmup_queries": len(warm),
        "note": "the corpus's chunks repeated with changed ids; embeddings and token vectors reused (embedding time estimated from the measured chunks/s); latency after warm-up queries not in the timed set",
    }
    print(f"[scale] {json.dumps(out)}", flush=True)
    return out
