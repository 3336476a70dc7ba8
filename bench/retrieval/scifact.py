"""Retrieval benchmark on BEIR SciFact (test split, 300 queries), ours vs a plain LangChain +
Chroma dense pipeline, in one run on the same machine.

Measured: nDCG@10, recall@10, recall@100 (our exact implementation, cross-checked against
pytrec_eval on every run) for BM25, dense, hybrid (convex and RRF fusion) with our default int8
ONNX embedder and with the float32 sentence-transformers embedder (the quality reference), and
for LangChain; ingest time, docs/s and chunks/s; query latency p50/p95 (one query at a time,
k=10, embedding included); and at ~100K chunks (the corpus's chunks repeated with changed ids,
their embeddings reused, not recomputed) the write + BM25 time and hybrid query p50/p95.

    python -m bench.retrieval.scifact                  # everything; bench/results/retrieval.json
    python -m bench.retrieval.scifact --tune           # also tune BM25/fusion on the TRAIN split
    python -m bench.retrieval.scifact --rerank --rerank-tune   # also the offline MaxSim reranker (slow on CPU)
    python -m bench.retrieval.scifact --limit-docs 500 --skip-langchain --scale 0   # a quick smoke run

Documents are title + " " + text for LangChain (as the shared/data README's baselines); ours
ingests the BEIR corpus.jsonl as it is (title kept as each chunk's header).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.cpu_hardware import cpu_model
from bench.common.paths import RESULTS
from bench.common.stats import percentile
from bench.retrieval.beir import SCIFACT, checked, load_beir
from bench.retrieval.embedder_floor import floors, report
from bench.retrieval.tuning import run_rerank, run_tune
from jamba_stack.retrieval.embeddings import Embedder, SentenceTransformerEmbedder, make_embedder
from jamba_stack.retrieval.ingest import ingest, rebuild_bm25
from jamba_stack.retrieval.search import Retriever, load_bm25
from jamba_stack.retrieval.store import Store


def hardware() -> dict[str, Any]:
    import torch

    versions = {}
    for mod in (
        "torch",
        "onnxruntime",
        "chromadb",
        "bm25s",
        "sentence_transformers",
        "langchain_chroma",
        "langchain_core",
    ):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
        "versions": versions,
    }


# ---------------------------------------------------------------- ours


def run_ours(
    label: str,
    corpus: Path,
    work: Path,
    embedder: Embedder,
    queries: dict[str, str],
    qrels: dict,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], Retriever]:
    data = work / label
    t = time.perf_counter()
    chunk_tokens = getattr(args, "chunk_tokens_now", None)
    report = ingest(
        corpus, "scifact", data_dir=data, embedder=embedder, progress=True, chunk_tokens=chunk_tokens
    )
    ingest_s = time.perf_counter() - t
    retriever = Retriever(Store(data).open("scifact"), embedder, load_bm25(Store(data).open("scifact")))
    out: dict[str, Any] = {
        "embedder": f"{embedder.name} ({embedder.backend})",
        "chunk_tokens": chunk_tokens or embedder.chunk_tokens,
        "documents": report.documents,
        "chunks": report.chunks_total,
        "ingest_s": ingest_s,
        "docs_per_s": report.documents / ingest_s,
        "chunks_per_s": report.chunks_total / ingest_s,
        "ingest_breakdown_s": report.seconds,
        "quality": {},
        "latency_ms": {},
    }
    qids = list(queries)
    texts = [queries[q] for q in qids]
    configs = {
        "bm25": {"mode": "bm25"},
        "dense": {"mode": "dense"},
        "hybrid": {"mode": "hybrid"},
        "hybrid_rrf": {"mode": "hybrid", "fusion": "rrf"},
    }
    for name, cfg in configs.items():
        r = (
            retriever
            if "fusion" not in cfg
            else Retriever(retriever.collection, embedder, retriever.bm25, fusion="rrf")
        )
        hits = r.search_many(texts, 100, mode=cfg["mode"], unique_docs=True)
        run = {q: [h.doc_id for h in hs] for q, hs in zip(qids, hits, strict=True)}
        out["quality"][name] = checked(run, qrels)
    for name in ("bm25", "dense", "hybrid"):
        times = []
        for q in texts[: args.latency_queries]:
            t = time.perf_counter()
            retriever.search(q, 10, mode=name)
            times.append((time.perf_counter() - t) * 1000)
        out["latency_ms"][name] = {"p50": percentile(times, 50), "p95": percentile(times, 95)}
    print(
        f"[{label}] {json.dumps({k: v for k, v in out.items() if k != 'ingest_breakdown_s'}, default=str)}",
        flush=True,
    )
    return out, retriever


# ---------------------------------------------------------------- LangChain


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


# ---------------------------------------------------------------- scale


def run_scale(
    src: Retriever,
    target: int,
    work: Path,
    embedder: Embedder,
    queries: dict[str, str],
    args: argparse.Namespace,
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
    times = []
    for text in list(queries.values())[: args.latency_queries]:
        t = time.perf_counter()
        retriever.search(text, 10)
        times.append((time.perf_counter() - t) * 1000)
    chunks_per_s = args._chunks_per_s
    out = {
        "chunks": n,
        "copies": reps,
        "write_s": write_s,
        "bm25_build_s": bm25_s,
        "embedding_estimate_s": n / chunks_per_s if chunks_per_s else None,
        "ingest_estimate_s": write_s + bm25_s + (n / chunks_per_s if chunks_per_s else 0.0),
        "hybrid_latency_ms": {"p50": percentile(times, 50), "p95": percentile(times, 95)},
        "note": "the corpus's chunks repeated with changed ids; embeddings reused (embedding time estimated from the measured chunks/s)",
    }
    print(f"[scale] {json.dumps(out)}", flush=True)
    return out


# ---------------------------------------------------------------- report


def table(res: dict[str, Any]) -> str:
    lines = [
        "| system | nDCG@10 | R@10 | R@100 | ingest s | docs/s | chunks/s | query p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    extra = sorted(k for k in res if k.startswith("ours_int8_chunk"))
    for name in ("ours_int8", *extra, "ours_fp32", "langchain"):
        s = res.get(name)
        if not s:
            continue
        for i, (mode, q) in enumerate(s["quality"].items()):
            lat = s["latency_ms"].get(mode)
            ing = (
                f"{s['ingest_s']:.1f} | {s['docs_per_s']:.1f} | {s['chunks_per_s']:.1f}"
                if i == 0
                else "  |  |  "
            )
            lat_s = f"{lat['p50']:.1f} | {lat['p95']:.1f}" if lat else "  |  "
            lines.append(
                f"| {name} {mode} | {q['ndcg@10']:.4f} | {q['recall@10']:.4f} | {q['recall@100']:.4f} | {ing} | {lat_s} |"
            )
    if "scale" in res:
        sc = res["scale"]
        lines.append(
            f"| scale: {sc['chunks']:,} chunks hybrid | | | | write {sc['write_s']:.0f} + BM25 {sc['bm25_build_s']:.0f} "
            f"(+ embed est. {sc['embedding_estimate_s'] or 0:.0f}) | | | {sc['hybrid_latency_ms']['p50']:.1f} | {sc['hybrid_latency_ms']['p95']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", type=Path, default=SCIFACT, help="BEIR SciFact folder")
    ap.add_argument("--out", type=Path, default=RESULTS / "retrieval.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--limit-docs", type=int, default=0, help="first N documents only (smoke runs)")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--skip-langchain", action="store_true")
    ap.add_argument("--skip-fp32", action="store_true", help="skip the float32 quality reference")
    ap.add_argument("--scale", type=int, default=100_000, help="chunks for the scale run (0: skip)")
    ap.add_argument("--tune", action="store_true", help="also tune BM25/fusion on the train split")
    ap.add_argument("--rerank", action="store_true", help="also measure the offline MaxSim reranker")
    ap.add_argument("--rerank-tune", action="store_true", help="with --rerank: its grid on the train split")
    ap.add_argument("--rerank-train-queries", type=int, default=0, help="first N train queries (0: all)")
    ap.add_argument(
        "--rerank-cache",
        type=Path,
        default=None,
        help="token vectors of chunks, by chunk id, kept between runs (default: one file per embedder backend)",
    )
    ap.add_argument(
        "--extra-chunk-tokens",
        default="",
        help="also ingest with these chunk sizes, comma-separated (e.g. 510)",
    )
    args = ap.parse_args()
    args.extra_chunk_tokens = [int(x) for x in args.extra_chunk_tokens.split(",") if x]

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = args.data / "corpus.jsonl"
    rows = [json.loads(x) for x in corpus.read_text().splitlines()]
    if args.limit_docs:
        rows = rows[: args.limit_docs]
        corpus = work / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries, qrels = load_beir(args.data, "test")
    if args.limit_docs:
        keep = {r["_id"] for r in rows}
        qrels = {q: {d: s for d, s in rel.items() if d in keep} for q, rel in qrels.items()}
        qrels = {q: rel for q, rel in qrels.items() if rel}
        queries = {q: t for q, t in queries.items() if q in qrels}

    res: dict[str, Any] = {
        "dataset": f"SciFact test ({len(queries)} queries, {len(rows)} docs)",
        "hardware": hardware(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase, so a long run interrupted keeps what it measured
        res["load_avg_now"] = os.getloadavg()
        args.out.write_text(json.dumps(res, indent=2, default=str))

    t = time.perf_counter()
    int8 = make_embedder("minilm", cache_dir=work / "models")
    res["onnx_export_s"] = time.perf_counter() - t  # once per data dir, not part of ingest
    if args.rerank_cache is None:  # vectors of another build must not be reused
        args.rerank_cache = RESULTS / "scifact_cache" / f"tokvec_{int8.backend}.pkl"
    # Phases in order of what matters most, each saved as soon as it is measured.
    res["ours_int8"], ours = run_ours("ours_int8", corpus, work, int8, queries, qrels, args)
    save()
    if args.scale:
        args._chunks_per_s = res["ours_int8"]["chunks_per_s"]
        res["scale"] = run_scale(ours, args.scale, work, int8, queries, args)
        save()
    if not args.skip_langchain:
        res["langchain"] = run_langchain(rows, queries, qrels, work, args)
        save()
    if not args.skip_fp32:
        res["ours_fp32"], _ = run_ours(
            "ours_fp32", corpus, work, SentenceTransformerEmbedder(), queries, qrels, args
        )
        save()
    for extra in args.extra_chunk_tokens:
        args.chunk_tokens_now = extra
        res[f"ours_int8_chunk{extra}"], _ = run_ours(
            f"ours_int8_chunk{extra}", corpus, work, int8, queries, qrels, args
        )
        args.chunk_tokens_now = None
        save()
    if "langchain" in res and not args.limit_docs:
        measured = {k: v["ingest_s"] for k, v in res.items() if isinstance(v, dict) and "ingest_s" in v}
        sizes = [res["ours_int8"]["chunk_tokens"], *args.extra_chunk_tokens]
        res["floor"] = floors(corpus, sizes, res["langchain"]["ingest_s"], measured)
        save()
    if args.tune:
        res["tuning"] = run_tune(ours, args.data)
        save()
    if args.rerank:
        res["rerank"] = run_rerank(ours, queries, qrels, args)
        save()

    o = res["ours_int8"]
    summary: dict[str, Any] = {
        "hybrid_ndcg@10": o["quality"]["hybrid"]["ndcg@10"],
        "goal_hybrid_ndcg@10": 0.74,
    }
    if "langchain" in res:
        summary["ingest_docs_per_s_ratio_vs_langchain"] = o["docs_per_s"] / res["langchain"]["docs_per_s"]
        summary["goal_ratio"] = 2.0
        for extra in args.extra_chunk_tokens:
            x = res[f"ours_int8_chunk{extra}"]
            summary[f"chunk{extra}_docs_per_s_ratio_vs_langchain"] = (
                x["docs_per_s"] / res["langchain"]["docs_per_s"]
            )
            summary[f"chunk{extra}_hybrid_ndcg@10"] = x["quality"]["hybrid"]["ndcg@10"]
    if "floor" in res:
        summary["ingest_ratio_ceiling_vs_langchain"] = {
            r["key"]: r["ceiling_ratio_vs_langchain"] for r in res["floor"]["rows"] if r["key"] != "langchain"
        }
    if "ours_fp32" in res:
        f = res["ours_fp32"]
        summary["int8_minus_fp32_ndcg@10"] = {
            m: o["quality"][m]["ndcg@10"] - f["quality"][m]["ndcg@10"] for m in ("dense", "hybrid")
        }
        summary["int8_vs_fp32_docs_per_s"] = o["docs_per_s"] / f["docs_per_s"]
    if "scale" in res:
        summary["hybrid_p50_ms_at_scale"] = res["scale"]["hybrid_latency_ms"]["p50"]
        summary["goal_p50_ms"] = 30
    res["summary"] = summary
    res["load_avg_at_end"] = os.getloadavg()
    print()
    print(table(res))
    if "floor" in res:
        print()
        print(report(res["floor"]))
    print(json.dumps(summary, indent=2))
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
