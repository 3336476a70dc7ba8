"""The LangChain + Chroma dense pipeline that `bench.retrieval.scifact` runs beside ours (needs the
`bench` extra: `langchain-chroma`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common.stats import percentile
from bench.retrieval.beir import checked


def run_langchain(
    corpus_rows: list[dict], queries: dict[str, str], qrels: dict, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The plain pipeline anyone writes: sentence-transformers embeddings through LangChain's
    `Embeddings` interface (what langchain-huggingface's HuggingFaceEmbeddings does: one
    `encode` call over all texts, batch 32), `langchain_chroma.Chroma` with defaults,
    `similarity_search_with_score`."""
    from chromadb.config import Settings as ChromaSettings
    from langchain_chroma import Chroma
    from langchain_core.embeddings import Embeddings
    from sentence_transformers import SentenceTransformer

    from jamba_stack.retrieval.embeddings import default_model_dir

    class STEmbeddings(Embeddings):
        # langchain-huggingface pins huggingface_hub<2, which would downgrade the runtime's hub
        # client; its HuggingFaceEmbeddings is this: SentenceTransformer(...).encode(texts).
        def __init__(self) -> None:
            self.model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.model.encode(texts, show_progress_bar=True).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.model.encode([text], show_progress_bar=False)[0].tolist()

    emb = STEmbeddings()
    texts = [f"{r.get('title', '')} {r['text']}".strip() for r in corpus_rows]
    t = time.perf_counter()
    db = Chroma(
        collection_name="scifact",
        embedding_function=emb,
        persist_directory=str(work / "langchain"),
        client_settings=ChromaSettings(
            anonymized_telemetry=False, is_persistent=True, persist_directory=str(work / "langchain")
        ),
    )
    db.add_texts(
        texts, metadatas=[{"doc_id": r["_id"]} for r in corpus_rows], ids=[r["_id"] for r in corpus_rows]
    )
    ingest_s = time.perf_counter() - t
    run = {}
    for q, text in queries.items():
        run[q] = [d.metadata["doc_id"] for d, _ in db.similarity_search_with_score(text, k=100)]
    times = []
    for text in list(queries.values())[: args.latency_queries]:
        t = time.perf_counter()
        db.similarity_search_with_score(text, k=10)
        times.append((time.perf_counter() - t) * 1000)
    out = {
        "documents": len(texts),
        "chunks": len(texts),
        "ingest_s": ingest_s,
        "docs_per_s": len(texts) / ingest_s,
        "chunks_per_s": len(texts) / ingest_s,
        "quality": {"dense": checked(run, qrels)},
        "latency_ms": {"dense": {"p50": percentile(times, 50), "p95": percentile(times, 95)}},
    }
    print(f"[langchain] {json.dumps(out, default=str)}", flush=True)
    return out
