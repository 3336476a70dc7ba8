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
    # the rerank's choices on TRAIN, then TEST once on the same ingest, with the CLI on a fresh data dir:
    python -m bench.retrieval.scifact --split train --grid --skip-langchain --skip-fp32 --scale 0 \
        --latency-queries 0 --work W
    python -m bench.retrieval.scifact --split test --reuse-ingest --work W --cli --skip-fp32 --latency-queries 100

Every option (bm25, dense, hybrid, RRF, hybrid + MaxSim from each stored token-vector codec in
--codecs) gets nDCG@10, R@10, R@100, p50/p95 one query at a time, and storage per chunk; ingest
keeps f16 token vectors and the other codecs are copies of its rows in their codec.

Documents are title + " " + text for LangChain (as the shared/data README's baselines); ours
ingests the BEIR corpus.jsonl as it is (title kept as each chunk's header).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.cpu_hardware import cpu_model
from bench.common.paths import RESULTS
from bench.retrieval.beir import SCIFACT, load_beir
from bench.retrieval.cli_run import run_cli
from bench.retrieval.embedder_floor import floors, report
from bench.retrieval.langchain_baseline import run_langchain
from bench.retrieval.measure import codec_stores, latency, quality, storage
from bench.retrieval.scale import run_scale
from bench.retrieval.tuning import run_rerank, run_tune
from jamba_stack.retrieval.embeddings import Embedder, SentenceTransformerEmbedder, make_embedder
from jamba_stack.retrieval.ingest import ingest
from jamba_stack.retrieval.metrics import evaluate
from jamba_stack.retrieval.search import Retriever, load_bm25
from jamba_stack.retrieval.store import Store
from jamba_stack.retrieval.token_store import DEFAULT_CODEC


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
) -> tuple[dict[str, Any], Retriever, dict[str, Any]]:
    """Ingest (or, with --reuse-ingest, take the ingest a previous run left in the work folder and
    the numbers it measured), then each option's quality and latency; returns the row, the
    retriever (no reranker) and the token stores by codec."""
    from jamba_stack.retrieval.rerank import MaxSimReranker

    data = work / label
    saved = data / "ingest.json"
    chunk_tokens = getattr(args, "chunk_tokens_now", None)
    if args.reuse_ingest and saved.is_file():
        ing = json.loads(saved.read_text()) | {"reused": True}
    else:
        t = time.perf_counter()
        report = ingest(
            corpus,
            "scifact",
            data_dir=data,
            embedder=embedder,
            progress=True,
            chunk_tokens=chunk_tokens,
            token_vectors=args.token_vectors,
        )
        ingest_s = time.perf_counter() - t
        ing = {
            "embedder": f"{embedder.name} ({embedder.backend})",
            "chunk_tokens": chunk_tokens or embedder.chunk_tokens,
            "token_vectors": args.token_vectors,
            "documents": report.documents,
            "chunks": report.chunks_total,
            "ingest_s": ingest_s,
            "docs_per_s": report.documents / ingest_s,
            "chunks_per_s": report.chunks_total / ingest_s,
            "ingest_ms_per_chunk": 1000 * ingest_s / report.chunks_total,
            "ingest_breakdown_s": report.seconds,
            "load_avg_after_ingest": os.getloadavg(),
        }
        saved.write_text(json.dumps(ing, indent=2))
    col = Store(data).open("scifact")
    retriever = Retriever(col, embedder, load_bm25(col))
    codecs = [c for c in args.codecs.split(",") if c] if args.token_vectors != "none" else []
    stores = codec_stores(col.state_dir, data, codecs, embedder.dim)
    out: dict[str, Any] = ing | {
        "storage": storage(data, ing["chunks"]),
        "token_stores": {
            c: info | {"bytes_per_chunk": info["file_bytes"] / ing["chunks"]}
            for c, (_, info) in stores.items()
        },
        "quality": {},
        "latency_ms": {},
    }
    qids = list(queries)
    texts = [queries[q] for q in qids]
    lat = texts[: args.latency_queries]
    rrf = Retriever(col, embedder, retriever.bm25, fusion="rrf")
    rows: list[tuple[str, Retriever, dict[str, Any]]] = [
        ("bm25", retriever, {"mode": "bm25"}),
        ("dense", retriever, {"mode": "dense"}),
        ("hybrid", retriever, {"mode": "hybrid", "rerank": False}),
        ("hybrid_rrf", rrf, {"mode": "hybrid"}),
    ]
    if not args.grid:  # on train the grid below scores every codec at every setting
        for codec, (store, _) in stores.items():
            tag = " (default of search and ask)" if codec == DEFAULT_CODEC else ""
            rerank = MaxSimReranker(embedder, tokens=store)
            rows.append((f"hybrid + MaxSim, stored {codec}{tag}", retriever, {"rerank": rerank}))
        if args.rerank_reencode:
            rows.append(
                ("hybrid + MaxSim, candidates re-encoded", retriever, {"rerank": MaxSimReranker(embedder)})
            )
    for name, r, kw in rows if not args.grid else []:  # the grid scores the hybrid itself
        out["quality"][name] = quality(r, qids, texts, qrels, **kw)
        if name != "hybrid_rrf" and lat:
            out["latency_ms"][name] = latency(r, lat[:20] if "re-encoded" in name else lat, **kw)
        print(
            f"[{label}] {name}: {json.dumps(out['quality'][name])} {json.dumps(out['latency_ms'].get(name))}",
            flush=True,
        )
    if args.grid:
        out["grid"] = rerank_grid(retriever, {c: s for c, (s, _) in stores.items()}, qids, texts, qrels)
    return out, retriever, {c: s for c, (s, _) in stores.items()}


GRID = {"candidates": (20, 30, 50, 100), "alpha": (0.3, 0.4, 0.5, 0.6, 0.7), "weighting": ("idf", "none")}


def rerank_grid(
    retriever: Retriever, stores: dict[str, Any], qids: list[str], texts: list[str], qrels: dict
) -> dict[str, Any]:
    """nDCG@10 of MaxSim from each stored codec over `GRID` (candidates x blend weight x query-token
    weighting), as `search(q, 10, unique_docs=True, rerank=...)` ranks them: the fused top 100 chunks
    of one first-stage search per query (its vector embedded alone, 50 candidates from each
    retriever as search takes for k=10), the top N reranked, the rest in fused order, one chunk per
    document. For the TRAIN split: where the defaults are chosen."""
    from jamba_stack.retrieval.rerank import MaxSimReranker, blend

    first = []
    for t in texts:
        hits = retriever.search(t, 100, candidates=50, rerank=False)
        _, qtok = retriever.embedder.embed_query_tokens(t)
        first.append((hits, qtok))
    base = {q: _dedup([h.doc_id for h in hits])[:100] for q, (hits, _) in zip(qids, first, strict=True)}
    out: dict[str, Any] = {"hybrid": evaluate(base, qrels)["ndcg@10"], "cells": {}}
    nmax = max(GRID["candidates"])
    for codec, store in stores.items():
        ms = MaxSimReranker(retriever.embedder, tokens=store)
        # Per query only the best match of each query token in each candidate (n_query_tokens,
        # nmax) and the candidates' token ids are kept: the decoded vectors of 100 candidates for
        # 800 queries would not fit in memory.
        per_query = []
        for hits, qtok in first:
            passages = ms.stored_vectors(hits[:nmax])
            q = store.codec.query(qtok.vecs)
            best = np.stack([(q @ p.vecs.T).max(axis=1) for p in passages], axis=1)
            per_query.append((hits, qtok.ids, [p.ids for p in passages], best))
        for w in GRID["weighting"]:
            for n in GRID["candidates"]:
                scored = []
                for _, qids_, pids, best in per_query:
                    wt = ms.local_idf(qids_, pids[:n]) if w == "idf" else np.ones(len(qids_), np.float32)
                    scored.append((wt / wt.sum()) @ best[:, :n])
                for a in GRID["alpha"]:
                    run = {}
                    for q, (hits, _, _, _), s in zip(qids, per_query, scored, strict=True):
                        head = hits[:n]
                        f = np.array([h.score for h in head], dtype=np.float32)
                        order = np.argsort(-blend(s, f, a), kind="stable")
                        run[q] = _dedup([head[i].doc_id for i in order] + [h.doc_id for h in hits[n:]])[:100]
                    out["cells"][f"{codec} {w} top{n} alpha={a}"] = evaluate(run, qrels)["ndcg@10"]
        best = max((k for k in out["cells"] if k.startswith(codec + " ")), key=out["cells"].__getitem__)
        print(
            f"[grid] {codec}: best {best} {out['cells'][best]:.4f} (hybrid {out['hybrid']:.4f})", flush=True
        )
    return out


def _dedup(doc_ids: list[str]) -> list[str]:
    return list(dict.fromkeys(doc_ids))


# ---------------------------------------------------------------- report


def table(res: dict[str, Any]) -> str:
    lines = [
        "| system | nDCG@10 | R@10 | R@100 | ingest s | docs/s | ms/chunk | query p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    extra = sorted(k for k in res if k.startswith("ours_int8_chunk"))
    for name in ("ours_int8", *extra, "ours_fp32", "langchain"):
        s = res.get(name)
        if not s:
            continue
        for i, (mode, q) in enumerate(s["quality"].items()):
            lat = s["latency_ms"].get(mode)
            ms = s.get("ingest_ms_per_chunk", 1000 * s["ingest_s"] / s["chunks"])
            ing = f"{s['ingest_s']:.1f} | {s['docs_per_s']:.1f} | {ms:.1f}" if i == 0 else "  |  |  "
            lat_s = f"{lat['p50']:.1f} | {lat['p95']:.1f}" if lat else "  |  "
            lines.append(
                f"| {name} {mode} | {q['ndcg@10']:.4f} | {q['recall@10']:.4f} | {q['recall@100']:.4f} | {ing} | {lat_s} |"
            )
    if "scale" in res:
        sc = res["scale"]
        for mode, lat in sc["latency_ms"].items():
            lines.append(
                f"| scale: {sc['chunks']:,} chunks, {mode} | | | | write {sc['write_s']:.0f} + BM25 {sc['bm25_build_s']:.0f} | | | {lat['p50']:.1f} | {lat['p95']:.1f} |"
            )
    for name in ("ours_int8", *extra, "ours_fp32"):
        st = res.get(name, {}).get("storage")
        if st:
            lines.append(
                f"storage {name}: Chroma {st['chroma_bytes_per_chunk'] / 1024:.1f} KiB/chunk, BM25 "
                f"{st['bm25_bytes_per_chunk'] / 1024:.1f}, token vectors {st['tokens_file_bytes_per_chunk'] / 1024:.1f} "
                f"(file; {st.get('token_codes_bytes_per_chunk', 0) / 1024:.1f} ids + codes, "
                f"{st.get('tokens_per_chunk', 0):.0f} tokens/chunk, {st.get('token_codec', 'none')})"
            )
    for codec, ts in res.get("ours_int8", {}).get("token_stores", {}).items():
        how = f"copied from the ingested store in {ts['copy_s']:.1f} s" if ts["copied"] else "as ingested"
        lines.append(f"token vectors {codec}: {ts['bytes_per_chunk'] / 1024:.1f} KiB/chunk on disk ({how})")
    grid = res.get("ours_int8", {}).get("grid")
    if grid:
        lines.append(f"grid ({res['dataset']}): hybrid {grid['hybrid']:.4f}; best per codec:")
        for codec in res["ours_int8"]["token_stores"]:
            cells = {k: v for k, v in grid["cells"].items() if k.startswith(codec + " ")}
            best = max(cells, key=cells.__getitem__)
            lines.append(f"  {best}: {cells[best]:.4f}")
    if "cli" in res:
        c = res["cli"]
        lines.append(
            f"cli ingest (fresh data dir, default codec): {c['ingest_s']:.1f} s, {c['ingest_ms_per_chunk']:.1f} ms/chunk"
        )
        for rerank, x in c["search"].items():
            lines.append(
                f"cli search --rerank {rerank}: nDCG@10 {x['ndcg@10']:.4f}, {x['queries']} queries in "
                f"{x['wall_s']:.1f} s ({x['ms_per_query']:.1f} ms/query after start-up)"
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
        "--token-vectors",
        default="f16",
        help="codec ingest stores token vectors in (none: keep none); the --codecs are copies of its rows",
    )
    ap.add_argument(
        "--codecs",
        default=f"{DEFAULT_CODEC},pca64x4,i8,f16",
        help="token-vector codecs to score the MaxSim rerank with, comma-separated",
    )
    ap.add_argument(
        "--reuse-ingest",
        action="store_true",
        help="take the ingest (and its measured times) a previous run left in --work",
    )
    ap.add_argument(
        "--grid",
        action="store_true",
        help="the rerank grid (codec x candidates x blend x weighting): run it on --split train",
    )
    ap.add_argument(
        "--rerank-reencode", action="store_true", help="also MaxSim re-encoding its candidates (slow)"
    )
    ap.add_argument("--cli", action="store_true", help="also search through `jamba-stack search --queries`")
    ap.add_argument("--split", default="test", help="test (reported) or train (where choices are made)")
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
    queries, qrels = load_beir(args.data, args.split)
    if args.limit_docs:
        keep = {r["_id"] for r in rows}
        qrels = {q: {d: s for d, s in rel.items() if d in keep} for q, rel in qrels.items()}
        qrels = {q: rel for q, rel in qrels.items() if rel}
        queries = {q: t for q, t in queries.items() if q in qrels}

    res: dict[str, Any] = {
        "dataset": f"SciFact {args.split} ({len(queries)} queries, {len(rows)} docs)",
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
    res["ours_int8"], ours, stores = run_ours("ours_int8", corpus, work, int8, queries, qrels, args)
    save()
    if args.scale:
        args._chunks_per_s = res["ours_int8"]["chunks_per_s"]
        res["scale"] = run_scale(ours, args.scale, work, int8, queries, args, stores.get(DEFAULT_CODEC))
        save()
    if args.cli:
        res["cli"] = run_cli(corpus, queries, qrels, work)
        save()
    if not args.skip_langchain:
        res["langchain"] = run_langchain(rows, queries, qrels, work, args)
        save()
    if not args.skip_fp32:
        res["ours_fp32"], _, _ = run_ours(
            "ours_fp32", corpus, work, SentenceTransformerEmbedder(), queries, qrels, args
        )
        save()
    for extra in args.extra_chunk_tokens:
        args.chunk_tokens_now = extra
        res[f"ours_int8_chunk{extra}"], _, _ = run_ours(
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
    if "hybrid" not in o["quality"]:  # --grid: the table above is the result
        save()
        print(table(res))
        return
    summary: dict[str, Any] = {
        "hybrid_ndcg@10": o["quality"]["hybrid"]["ndcg@10"],
        "default_search_ndcg@10": next(
            (v["ndcg@10"] for k, v in o["quality"].items() if "default" in k),
            o["quality"]["hybrid"]["ndcg@10"],
        ),
        "goal_default_search_ndcg@10": 0.735,
        "goal_ask_ndcg@10": 0.75,
        "default_search_p50_ms": next((v["p50"] for k, v in o["latency_ms"].items() if "default" in k), None),
        "goal_ask_retrieval_p50_ms": 300,
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
        summary["p50_ms_at_scale"] = {k: v["p50"] for k, v in res["scale"]["latency_ms"].items()}
        summary["goal_p50_ms_at_scale"] = 30
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
