"""`bench.retrieval.scifact --cli`: `jamba-stack ingest` on a fresh data dir, then `search --queries`
with the default, no and MaxSim rerank, timed per query and scored."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.retrieval.measure import storage
from jamba_stack.retrieval.metrics import evaluate
from jamba_stack.retrieval.store import Store


def run_cli(corpus: Path, queries: dict[str, str], qrels: dict, work: Path) -> dict[str, Any]:
    """As a user runs it, on a fresh data dir: `jamba-stack ingest CORPUS --collection scifact`
    (the default codec; the ONNX export copied in first, so ingest time is ingest's), then
    `jamba-stack search --collection scifact --k 10 --unique-docs --json --queries FILE` with the
    default reranker, `--rerank none` and `--rerank maxsim`, scored like the rows above. A process
    also starts up and loads the embedder: each search is run once more on one query, and the
    difference over the other queries is the time per query."""
    import shutil
    import subprocess
    import sys

    data = work / "cli"
    if data.exists():
        shutil.rmtree(data)
    shutil.copytree(work / "models", data / "models" / "embeddings")
    env = os.environ | {"JAMBA_STACK_DATA_DIR": str(data)}
    cli = [sys.executable, "-m", "jamba_stack.app.cli"]
    t = time.perf_counter()
    subprocess.run([*cli, "ingest", str(corpus), "--collection", "scifact", "--quiet"], env=env, check=True)
    ingest_s = time.perf_counter() - t
    col = Store(data).open("scifact")
    chunks = col.count()
    out: dict[str, Any] = {
        "ingest_s": ingest_s,
        "ingest_ms_per_chunk": 1000 * ingest_s / chunks,
        "storage": storage(data, chunks),
        "search": {},
    }
    print(f"[cli ingest] {json.dumps(out)}", flush=True)
    qfile, one = work / "queries.jsonl", work / "query1.jsonl"
    lines = [json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()]
    qfile.write_text("".join(lines))
    one.write_text(lines[0])
    for rerank in ("default", "none", "maxsim"):
        walls = []
        for f in (one, qfile):
            cmd = [*cli, "search", "--collection", "scifact", "--k", "10", "--unique-docs", "--json"]
            cmd += ["--queries", str(f)] + ([] if rerank == "default" else ["--rerank", rerank])
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - t)
        run = {}
        for line in proc.stdout.splitlines():
            row = json.loads(line)
            run[row["query_id"]] = [h["doc_id"] for h in row["results"]]
        m = evaluate(run, qrels)
        out["search"][rerank] = {
            "ndcg@10": m["ndcg@10"],
            "recall@10": m["recall@10"],
            "queries": len(run),
            "wall_s": walls[1],
            "wall_s_one_query": walls[0],
            "ms_per_query": 1000 * (walls[1] - walls[0]) / max(1, len(run) - 1),
        }
        print(f"[cli search --rerank {rerank}] {json.dumps(out['search'][rerank])}", flush=True)
    return out
