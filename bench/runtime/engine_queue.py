"""A long waiting queue on CPU: add N requests to the engine, then abort them all (the client left),
and the same through `AsyncLLM` (N streams whose tasks are cancelled at once).

    python -m bench.runtime.engine_queue                   # N = 1K, 10K, 40K; bench/results/engine_queue.json
    python -m bench.runtime.engine_queue --sizes 1000 --budget 60

Rows, per N (the tiny model; 8-token prompts):
- engine add: `LLMEngine.add_request` N times (no step runs: all N wait);
- engine abort: `LLMEngine.abort` of all N in a random (seeded) order, then steps until idle;
- async idle: `AsyncLLM` with N streams (one consumer task each; 64 run, the rest wait), a few
  decode steps run, then every task is cancelled at once (the client left): the time from the
  cancel to `metrics()` showing nothing waiting or running.
Each phase stops once it has run `--budget` seconds and reports how far it got. The code measured is
whatever `jamba_runtime` imports: for a "before", run it from the root of an older checkout with
this file copied in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import jamba_runtime
from bench.common.cpu_hardware import Contention, cpu_model
from bench.common.paths import RESULTS
from jamba_runtime import LLM, AsyncLLM, SamplingParams
from jamba_runtime.tiny import make_tiny_model

DEFAULT_OUT = RESULTS / "engine_queue.json"
PROMPT = [5, 9, 14, 3, 27, 8, 11, 6]


def engine_rows(model: Path, n: int, budget: float) -> list[dict[str, Any]]:
    llm = LLM(model=model)
    engine = llm.engine
    params = SamplingParams(max_tokens=4, temperature=0)
    rows = []
    t0, added = time.perf_counter(), 0
    while added < n and time.perf_counter() - t0 < budget:
        engine.add_request(PROMPT, params, request_id=f"r{added}")
        added += 1
    t_add = time.perf_counter() - t0
    rows.append(_row("engine add", n, added, t_add, engine.metrics().waiting))
    order = list(range(added))
    random.Random(0).shuffle(order)
    t0, aborted = time.perf_counter(), 0
    for i in order:
        if time.perf_counter() - t0 > budget:
            break
        engine.abort(f"r{i}")
        aborted += 1
    while aborted == added and engine.has_unfinished():
        engine.step()
    t_abort = time.perf_counter() - t0
    m = engine.metrics()
    if aborted == added:
        engine.check_cache()
    rows.append(_row("engine abort all, then idle", n, aborted, t_abort, m.waiting + m.running))
    return rows


async def _async_idle(model: Path, n: int, budget: float) -> dict[str, Any]:
    llm = AsyncLLM(model=model)
    params = SamplingParams(max_tokens=1_000, temperature=0, ignore_eos=True)
    started = asyncio.Event()

    async def consume(i: int) -> None:
        async for _ in llm.add_request(PROMPT, params, request_id=f"a{i}"):
            started.set()

    tasks = [asyncio.create_task(consume(i)) for i in range(n)]
    await asyncio.wait_for(started.wait(), budget)  # the engine runs some of them
    deadline = time.perf_counter() + budget
    while llm.metrics().waiting + llm.metrics().running < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)  # every add has reached the engine (or the budget is spent)
    # A few decode steps, so the cancel lands beside a running batch, not the first prefill.
    batch = min(n, llm.engine.scheduler.config.max_num_seqs)
    while llm.metrics().generation_tokens_total < 3 * batch and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    for t in tasks:
        t.cancel()
    while time.perf_counter() - t0 < budget:
        m = llm.metrics()
        if m.waiting == 0 and m.running == 0:
            break
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    m = llm.metrics()
    await asyncio.gather(*tasks, return_exceptions=True)
    await llm.aclose()
    left = m.waiting + m.running
    return _row("async: tasks cancelled -> idle", n, n - left, elapsed, left)


def _row(phase: str, n: int, done: int, seconds: float, left: int) -> dict[str, Any]:
    return {
        "phase": phase,
        "n": n,
        "done": done,
        "seconds": seconds,
        "us_per_request": seconds / max(done, 1) * 1e6,
        "complete": done == n,
        "left_in_engine": left,
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,40000")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds a phase may run before it stops")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--only", choices=["engine", "async"], help="run only the engine rows or the AsyncLLM rows"
    )
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before, after)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    load = Contention()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "tiny")
        for n in (int(s) for s in args.sizes.split(",")):
            if args.only != "async":
                rows += engine_rows(model, n, args.budget)
            if args.only != "engine":
                rows.append(asyncio.run(_async_idle(model, n, args.budget)))
    others = load.others_share()
    print(
        f"{cpu_model()}, {args.threads} thread(s), torch {torch.__version__}; jamba_runtime from "
        f"{Path(jamba_runtime.__file__).parent}; others' CPU share {others if others is None else f'{others:.0%}'}"
    )
    print("| phase | N | done | s | µs per request | left in engine |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        done = f"{r['done']:,}" + ("" if r["complete"] else " (stopped at the budget)")
        print(
            f"| {r['phase']} | {r['n']:,} | {done} | {r['seconds']:.2f} | {r['us_per_request']:.1f} | "
            f"{r['left_in_engine']:,} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "label": args.label,
                "args": {k: str(v) for k, v in vars(args).items()},
                "cpu": cpu_model(),
                "others_cpu_share": others,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
