"""Many agents on one runtime: completed agent steps per second when N agents run concurrently
(their turns batch in the engine) vs the same agents one after another, on the same engine.

    python bench/agents.py                       # N = 1, 8, 32, 64 on the tiny model, CPU
    python bench/agents.py --quick               # N = 1, 8 (smoke run)
    python bench/agents.py --n 1 8 16 --steps 3 --model PATH --device cuda --out /tmp/a.json

Method (also stored in the JSON):
  workload  each agent does `--steps` tool-using turns (`tool_choice="required"`: the turn is a
            constrained tool-call block, max 32 new tokens) calling `get_weather(city, days)`,
            whose result goes back as a tool message, then one answer turn (`tool_choice="none"`,
            max 16 new tokens). A step is one model turn; each agent completes steps + 1 of them.
            Temperature 0.8, seed per agent (same seeds in both modes).
  concurrent  `AgentScheduler(max_concurrent_calls=N)` (or `--max-calls`): all N agents at once,
            every turn through one `AsyncLocalChatModel` (AsyncLLM over the engine), FIFO admission.
  sequential  the same scheduler with `max_running_agents=1` (same adapter, same engine, one agent
            at a time). Its rate does not depend on N, so for N above `--seq-sample` only the first
            `--seq-sample` agents run and the rate is theirs (marked "sampled").
  steps/s = completed steps / wall time of the mode; speedup = concurrent / sequential.
  Both modes reuse the previous turn's runtime snapshot as the prompt prefix (`AsyncLocalChatModel`
  prefix reuse; `--no-prefix-reuse` prefills every turn's whole conversation instead).
  The engine is warmed up first (a grammar compile and one run of each mode at N=1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch

REPO = Path(__file__).resolve().parent.parent
# This file is bench/agents.py: with bench/ on sys.path (as `python bench/agents.py` puts it),
# `import agents` would import this script instead of the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (_HERE, REPO)]

from pydantic import Field  # noqa: E402

from agents import Agent, Policy, tool  # noqa: E402
from agents.scheduler import AgentScheduler  # noqa: E402
from app.client import LocalChatModel  # noqa: E402
from jamba_runtime import LLM  # noqa: E402
from jamba_runtime.engine import EngineConfig  # noqa: E402
from jamba_runtime.tiny import make_tiny_model  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "agents.json"


@tool
def get_weather(city: Literal["Paris", "Oslo", "Lima", "Tokyo"], days: int = Field(1, ge=1, le=7)) -> str:
    """The weather forecast for a city.

    Args:
        city: the city.
        days: days ahead.
    """
    return f"{city}: sunny, 21 C, for {days} days"


def make_agents(model: LocalChatModel, n: int, steps: int) -> list[Agent]:
    def choice(step: int) -> str:
        return "required" if step < steps else "none"

    return [
        Agent(
            name=f"agent{i}",
            instructions="Find the weather with the tool, then answer in one line.",
            tools=[get_weather],
            model=model,
            tool_choice=choice,
            policy=Policy(max_steps=steps + 1),
            model_options={"max_tokens": 32, "temperature": 0.8, "seed": 1000 + i},
        )
        for i in range(n)
    ]


def run_mode(
    model: LocalChatModel, n: int, steps: int, concurrent: bool, reuse: bool, max_calls: int | None = None
) -> dict[str, Any]:
    agents = make_agents(model, n, steps)
    if concurrent:
        scheduler = AgentScheduler(max_concurrent_calls=max(1, min(n, max_calls or n)), reuse_prefix=reuse)
    else:
        scheduler = AgentScheduler(max_running_agents=1, reuse_prefix=reuse)
    t0 = time.perf_counter()
    results = scheduler.run([(a, f"What is the weather for trip #{i}?") for i, a in enumerate(agents)])
    wall = time.perf_counter() - t0
    done = sum(r.steps for r in results)
    tool_errors = sum(
        1 for r in results for e in r.trace if e.type == "tool_result" and e["error"] is not None
    )
    return {
        "agents": n,
        "wall_s": round(wall, 3),
        "steps": done,
        "steps_per_s": round(done / wall, 3),
        "tool_calls": sum(r.tool_calls for r in results),
        "tool_errors": tool_errors,
        "tokens": sum(r.total_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "stop_reasons": sorted({r.stop_reason for r in results}),
        "max_in_flight": scheduler.call_gate.max_in_flight if scheduler.call_gate else None,
        "prefix_requests": scheduler.prefix_requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1, 8, 32, 64], help="agent counts")
    parser.add_argument("--quick", action="store_true", help="N = 1, 8 only")
    parser.add_argument("--steps", type=int, default=3, help="tool-using turns per agent")
    parser.add_argument("--seq-sample", type=int, default=8, help="agents run in the sequential mode at most")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: a fresh tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--no-prefix-reuse", action="store_true", help="prefill each turn's whole conversation (both modes)"
    )
    parser.add_argument(
        "--max-calls", type=int, default=None, help="cap on turns in flight when concurrent (default N)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [1, 8] if args.quick else args.n

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_tiny_model(Path(tmp) / "tiny")
        llm = LLM(
            path,
            device=args.device,
            dtype=args.dtype,
            max_model_len=4096,
            engine=EngineConfig(
                max_num_seqs=max(64, *counts), num_snapshot_slots=2 * max(counts) + 4, cache_memory_gb=1.0
            ),
        )
        model = LocalChatModel(llm)
        reuse = not args.no_prefix_reuse
        run_mode(model, 1, 1, True, reuse)  # warm-up: grammar tables, first compile, both code paths
        run_mode(model, 1, 1, False, reuse)
        rows = []
        for n in counts:
            conc = run_mode(model, n, args.steps, True, reuse, args.max_calls)
            seq_n = min(n, args.seq_sample)
            seq = run_mode(model, seq_n, args.steps, False, reuse)
            row = {
                "n": n,
                "concurrent": conc,
                "sequential": seq,
                "sequential_sampled": seq_n < n,
                "speedup": round(conc["steps_per_s"] / seq["steps_per_s"], 3),
            }
            rows.append(row)
            print(
                f"N={n:>3}  concurrent {conc['steps_per_s']:8.2f} steps/s ({conc['steps']} steps, "
                f"{conc['wall_s']:.1f} s)   sequential {seq['steps_per_s']:8.2f} steps/s "
                f"({seq['steps']} steps{' sampled' if seq_n < n else ''}, {seq['wall_s']:.1f} s)   "
                f"x{row['speedup']:.2f}",
                flush=True,
            )

    print()
    print("| N agents | concurrent steps/s | sequential steps/s | speedup | tool errors |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        errors = r["concurrent"]["tool_errors"] + r["sequential"]["tool_errors"]
        seq = f"{r['sequential']['steps_per_s']:.2f}" + (" (sampled)" if r["sequential_sampled"] else "")
        print(f"| {r['n']} | {r['concurrent']['steps_per_s']:.2f} | {seq} | {r['speedup']:.2f}x | {errors} |")
    report = {
        "bench": "agents",
        "method": __doc__,
        "model": str(args.model or "tiny (jamba_runtime.tiny, random weights)"),
        "device": args.device,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "steps_per_agent": args.steps + 1,
        "prefix_reuse": not args.no_prefix_reuse,
        "max_calls": args.max_calls,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
