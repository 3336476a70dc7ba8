"""Where a step's GPU time goes: torch.profiler over engine steps of the Mini shape cut to 8 layers.

    python -m bench.runtime.profile_gpu                  # prefill 32K (chunks of 8192) and decode b=1, 64
    python -m bench.runtime.profile_gpu --prefill 131072 --chunk 16384

For each phase (one long prompt's prefill; decode steps at each batch size) it prints the kernels
ranked by total CUDA time, grouped into families (scan, conv, attention, MoE GEMMs, dense GEMMs,
norms, copies, other), and the phase's wall time. JSON to `$OUT/profile_gpu.json`. A diagnostic,
not a benchmark: the profiler adds its own overhead to host-bound phases.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Any

import torch

from bench.common.gpu_models import MINI_CONFIG, build_models, cut_config, make_llm
from bench.common.kernel_families import family
from bench.common.paths import RESULTS, out_dir
from jamba_runtime import SamplingParams
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer


def profile(fn: Any) -> tuple[float, list[dict[str, Any]]]:
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0:
            rows.append({"kernel": e.key[:120], "calls": e.count, "ms": us / 1e3, "family": family(e.key)})
    rows.sort(key=lambda r: -r["ms"])
    return wall, rows


def report(name: str, wall: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(r["ms"] for r in rows)
    fams: dict[str, float] = defaultdict(float)
    for r in rows:
        fams[r["family"]] += r["ms"]
    print(f"\n## {name}: wall {wall * 1e3:.1f} ms, GPU kernels {total:.1f} ms")
    for f, ms in sorted(fams.items(), key=lambda x: -x[1]):
        print(f"  {f:18s} {ms:9.2f} ms  {100 * ms / max(total, 1e-9):5.1f}%")
    print("  top kernels:")
    for r in rows[:18]:
        print(f"    {r['ms']:9.2f} ms  x{r['calls']:<6d} {r['family']:12s} {r['kernel']}")
    return {
        "phase": name,
        "wall_ms": wall * 1e3,
        "gpu_ms": total,
        "families": dict(fams),
        "kernels": rows[:40],
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--prefill", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--context", type=int, default=2048, help="prompt tokens before the decode steps")
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    model, hf, _ = build_models(cut_config(MINI_CONFIG, args.layers), device, dtype, seed=0)
    del hf
    tok = RESULTS / "profile-tok"
    write_tiny_tokenizer(tok, vocab_size=model.config.vocab_size)
    batches = [int(b) for b in args.batches.split(",")]
    llm = make_llm(model, tok, max(batches), args.context + 64, args.chunk, capacity_tokens=args.prefill + 64)
    engine = llm.engine
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    phases = []

    def prefill() -> None:
        ids = torch.randint(20, vocab, (args.prefill,), generator=gen).tolist()
        llm.generate([ids], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))

    prefill()  # compile and warm
    phases.append(report(f"prefill {args.prefill} (chunk {args.chunk})", *profile(prefill)))
    for b in batches:
        params = SamplingParams(max_tokens=10_000, temperature=0, ignore_eos=True)
        rids = [
            engine.add_request(
                torch.randint(20, vocab, (args.context,), generator=gen).tolist(), params
            ).request_id
            for _ in range(b)
        ]
        while engine.scheduler.waiting or any(s.num_computed_tokens < len(s.prompt_token_ids)
                                              for s in engine.scheduler.running):  # fmt: skip
            engine.step()
        for _ in range(5):
            engine.step()

        def steps() -> None:
            for _ in range(10):
                engine.step()

        wall, rows = profile(steps)
        for r in rows:
            r["ms"] /= 10
        phases.append(report(f"decode b={b} context {args.context} (per step)", wall / 10, rows))
        for rid in rids:
            engine.abort(rid)
    (out_dir() / "profile_gpu.json").write_text(json.dumps({"args": vars(args), "phases": phases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
