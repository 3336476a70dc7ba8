"""Many agents on one runtime: completed agent steps per second when N agents run concurrently
(their turns batch in the engine) vs the same agents one after another, on the same engine.

    python -m bench.agents.throughput            # N = 1, 8, 32, 64 on the tiny model, CPU
    python -m bench.agents.throughput --quick    # N = 1, 8 (smoke run)
    python -m bench.agents.throughput --n 1 8 16 --steps 3 --model PATH --device cuda --out /tmp/a.json

Method (also stored in the JSON):
  workload  each agent does `--steps` tool-using turns (`tool_choice="required"`: the turn is a
            constrained tool-call block, max 32 new tokens) calling `get_weather(city, days)`,
            whose result goes back as a tool message, then one answer turn (`tool_choice="none"`,
            max 16 new tokens). A step is one model turn; each agent completes steps + 1 of them.
            Temperature 0.8, seed per agent (same seeds in both modes).
  concurrent  `AgentScheduler(max_concurrent_calls=N)` (or `--max-calls`): all N agents at once,
            every turn through the model's `concurrent()` adapter (AsyncLLM over the engine), FIFO admission.
  sequential  the same scheduler with `max_running_agents=1` (same adapter, same engine, one agent
            at a time). Its rate does not depend on N, so for N above `--seq-sample` only the first
            `--seq-sample` agents run and the rate is theirs (marked "sampled").
  steps/s = completed steps / wall time of the mode; speedup = concurrent / sequential.
  Both modes reuse the previous turn's runtime snapshot as the prompt prefix (the adapter,
  prefix reuse; `--no-prefix-reuse` prefills every turn's whole conversation instead).
  The engine is warmed up first (a grammar compile and one run of each mode at N=1).
  engine    per mode, from the engine's own thread (an `EngineProbe` around its scheduler and
            step): engine steps that ran something, mean / max sequences per step, mean step
            time, tokens scheduled, preemptions, most requests waiting, "slot-blocked" steps
            (a request waited, the batch had room, and no state slot was free: snapshots or
            restored waiting requests held them), and prefix snapshots before / most / after.
            A concurrent mode whose mean batch is far below N explains a low speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from bench.common.paths import RESULTS
from jamba_runtime import LLM, EngineConfig, LLMEngine, StepOutput
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.tiny import make_tiny_model
from jamba_stack.agents import Agent, Policy, tool
from jamba_stack.agents.scheduler import AgentScheduler
from jamba_stack.chat import LocalChatModel

DEFAULT_OUT = RESULTS / "agents.json"


@tool
def get_weather(city: Literal["Paris", "Oslo", "Lima", "Tokyo"], days: int = Field(1, ge=1, le=7)) -> str:
    """The weather forecast for a city.

    Args:
        city: the city.
        days: days ahead.
    """
    return f"{city}: sunny, 21 C, for {days} days"


@dataclass
class _Step:
    scheduled: int  # sequences in the step
    tokens: int
    waiting: int  # after scheduling
    slot_blocked: bool
    snapshots: int
    seconds: float = 0.0


@dataclass
class EngineProbe:
    """Per-step counters of one engine while a mode runs (`LLMEngine` keeps totals only, in
    `EngineMetrics`). Wraps the engine's `scheduler.schedule` and `step` on the instance; both run
    on the engine's one thread, and the lists are read after the run, when that thread is gone.
    Use: `with EngineProbe(engine) as probe: ...; probe.summary()`."""

    engine: LLMEngine
    steps: list[_Step] = field(default_factory=list)
    snapshots_before: int = 0
    preemptions_before: int = 0

    def __enter__(self) -> EngineProbe:
        engine, scheduler = self.engine, self.engine.scheduler
        schedule, step = scheduler.schedule, engine.step
        max_num_seqs = scheduler.config.max_num_seqs
        self.snapshots_before = len(engine.snapshots)
        self.preemptions_before = engine.metrics().preemptions_total

        def probed_schedule() -> SchedulerOutput:
            plan = schedule()
            waiting = scheduler.waiting
            # The head of the queue needs a slot, the batch has room, and none is free.
            blocked = bool(
                waiting
                and len(scheduler.running) < max_num_seqs
                and waiting[0].alloc.slot is None
                and engine.cache_manager.num_free_slots == 0
            )
            self.steps.append(
                _Step(
                    len(plan.scheduled),
                    plan.num_tokens,
                    len(waiting),
                    blocked,
                    len(engine.snapshots),
                )
            )
            return plan

        def probed_step() -> list[StepOutput]:
            t0 = time.perf_counter()
            n = len(self.steps)
            out = step()
            if len(self.steps) > n:  # the engine's fallback may schedule more than once: time the last
                self.steps[-1].seconds = time.perf_counter() - t0
            return out

        scheduler.schedule = probed_schedule  # type: ignore[method-assign]
        engine.step = probed_step  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.scheduler.schedule, self.engine.step  # back to the class's methods

    def summary(self) -> dict[str, Any]:
        ran = [s for s in self.steps if s.scheduled]
        m = self.engine.metrics()
        return {
            "steps": len(ran),
            "mean_batch": round(statistics.fmean(s.scheduled for s in ran), 2) if ran else 0.0,
            "max_batch": max((s.scheduled for s in ran), default=0),
            "mean_step_ms": round(1e3 * statistics.fmean(s.seconds for s in ran), 3) if ran else 0.0,
            "tokens": sum(s.tokens for s in ran),
            "preemptions": m.preemptions_total - self.preemptions_before,
            "max_waiting": max((s.waiting for s in self.steps), default=0),
            "slot_blocked_steps": sum(s.slot_blocked for s in ran),
            "snapshots_before": self.snapshots_before,
            "snapshots_max": max((s.snapshots for s in self.steps), default=self.snapshots_before),
            "snapshots_after": m.snapshots,
            "state_slots_total": m.state_slots_total,
            "max_num_seqs": self.engine.config.max_num_seqs,
        }


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
    with EngineProbe(model.llm.engine) as probe:
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
        "engine": probe.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, help="engine batch size (default: max(64, largest N))"
    )
    parser.add_argument(
        "--snapshot-slots", type=int, default=None, help="engine snapshot slots (default: 2 x largest N + 4)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [1, 8] if args.quick else args.n
    max_num_seqs = args.max_num_seqs or max(64, *counts)
    snapshot_slots = args.snapshot_slots if args.snapshot_slots is not None else 2 * max(counts) + 4

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_tiny_model(Path(tmp) / "tiny")
        llm = LLM(
            path,
            device=args.device,
            dtype=args.dtype,
            max_model_len=4096,
            engine=EngineConfig(
                max_num_seqs=max_num_seqs, num_snapshot_slots=snapshot_slots, cache_memory_gb=1.0
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
            e = conc["engine"]
            print(
                f"       engine (concurrent): {e['steps']} steps, batch {e['mean_batch']:.1f} mean / "
                f"{e['max_batch']} max, {e['mean_step_ms']:.1f} ms/step, {e['preemptions']} preemptions, "
                f"{e['slot_blocked_steps']} slot-blocked steps, max waiting {e['max_waiting']}, snapshots "
                f"{e['snapshots_before']} -> {e['snapshots_max']} max -> {e['snapshots_after']} "
                f"(slots {e['state_slots_total']})",
                flush=True,
            )

    print()
    print(
        "| N agents | concurrent steps/s | sequential steps/s | speedup | engine steps | mean batch "
        "| ms/step | preemptions | slot-blocked steps | max snapshots | tool errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        errors = r["concurrent"]["tool_errors"] + r["sequential"]["tool_errors"]
        seq = f"{r['sequential']['steps_per_s']:.2f}" + (" (sampled)" if r["sequential_sampled"] else "")
        e = r["concurrent"]["engine"]
        print(
            f"| {r['n']} | {r['concurrent']['steps_per_s']:.2f} | {seq} | {r['speedup']:.2f}x | {e['steps']} "
            f"| {e['mean_batch']:.1f} | {e['mean_step_ms']:.1f} | {e['preemptions']} "
            f"| {e['slot_blocked_steps']} | {e['snapshots_max']} | {errors} |"
        )
    print("(engine columns: the concurrent mode; each mode's are in the JSON)")
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
        "max_num_seqs": max_num_seqs,
        "num_snapshot_slots": snapshot_slots,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
