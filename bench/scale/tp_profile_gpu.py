"""Where a tensor-parallel decode step's time goes (a diagnostic, not a benchmark).

    python -m bench.scale.tp_profile_gpu --tp 2 --weights int8      # nvidia-h100-x2, about 2 minutes

Builds the Mini shape with random weights on N GPUs (`bench.scale.gpu`'s setup), decodes one
sequence (1K-token prompt) and reports on rank 0: ms per engine step with CUDA graphs and eagerly,
the host time of the step's parts (the message to the other ranks, the graph replay call, the
rest of `LLMEngine.step`), and torch.profiler's CUDA kernel table over 16 steps grouped into
families (NCCL, MoE, attention, scan, GEMMs...). JSON to `$OUT/tp_profile_gpu.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import torch

from bench.common.kernel_families import family
from bench.common.paths import out_dir
from bench.scale.gpu import engine_config, model_dir
from jamba_runtime import LLM, SamplingParams
from jamba_runtime.config import JambaConfig


def decode_ms(
    llm: LLM, steps: int, parts: dict[str, float] | None = None, profile: bool = False
) -> tuple[float, Any]:
    """ms per engine step decoding one sequence (after the prefill and 8 warm steps); `parts`
    collects host times; `profile` runs torch.profiler over the measured steps (returned)."""
    engine = llm.engine
    params = SamplingParams(max_tokens=steps + 16, temperature=0, ignore_eos=True)
    vocab = llm.config.vocab_size
    rid = engine.add_request([1, *(100 + i % (vocab - 100) for i in range(1023))], params).request_id
    for _ in range(9):  # the prefill, then warm decode steps (graph capture at batch 1)
        engine.step()
    _sync()
    if parts is not None:
        parts.clear()
    activity = (
        torch.profiler.ProfilerActivity.CUDA
        if torch.cuda.is_available()
        else torch.profiler.ProfilerActivity.CPU
    )
    prof = torch.profiler.profile(activities=[activity]) if profile else None
    if prof is not None:
        prof.__enter__()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _sync()
    dt = (time.perf_counter() - t) / steps
    if prof is not None:
        prof.__exit__(None, None, None)
    engine.abort(rid)
    return 1e3 * dt, prof


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(parts: dict[str, float], key: str, fn: Any) -> Any:
    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            parts[key] = parts.get(key, 0.0) + time.perf_counter() - t

    return wrapper


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--weights", choices=["int8", "bf16"], default="int8")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--eager", action="store_true", help="CUDA graphs off")
    ap.add_argument(
        "--shape", choices=["mini", "tiny"], default="mini", help="tiny on --device cpu: a logic check"
    )
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    directory = model_dir(args.shape, args.layers)
    cfg = JambaConfig.from_file(directory)
    quant = "experts_int8" if args.weights == "int8" else None
    cuda = args.device == "cuda"
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "args": vars(args)}
    graphs = not args.eager
    eng = engine_config(cfg, args.tp, 4, 4096, 4096, 4096)
    eng = type(eng)(**{**eng.__dict__, "cuda_graphs": graphs})
    llm = LLM(directory, device=args.device, dtype="bfloat16" if cuda else "float32", quantization=quant,
              tensor_parallel_size=args.tp,
              load_format="dummy", engine=eng, max_model_len=4096)  # fmt: skip
    runner = llm.engine.runner
    parts: dict[str, float] = {}
    if getattr(runner, "channel", None) is not None:
        runner.channel.send = timed(parts, "send", runner.channel.send)  # type: ignore[method-assign]
    if runner.graphs is not None:
        runner.graphs.run = timed(parts, "graph_run", runner.graphs.run)  # type: ignore[method-assign]
    llm.engine.step = timed(parts, "engine_step", llm.engine.step)  # type: ignore[method-assign]
    key = "graphs" if graphs else "eager"
    ms, _ = decode_ms(llm, args.steps, parts)
    report[key] = {"ms_per_step": ms, "host_ms_per_step": {k: 1e3 * v / args.steps for k, v in parts.items()}}
    print(key, json.dumps(report[key]), flush=True)
    n = 16
    _, prof = decode_ms(llm, n, profile=True)
    fam: dict[str, float] = defaultdict(float)
    top = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        fam["nccl" if "nccl" in e.key.lower() else family(e.key)] += us
        top.append((us, e.key[:90], e.count))
    report["profile_per_step_us"] = {k: v / n for k, v in sorted(fam.items(), key=lambda kv: -kv[1])}
    report["top_kernels"] = [
        {"us_total": u, "name": k, "count": c} for u, k, c in sorted(top, reverse=True)[:25]
    ]
    print(json.dumps(report["profile_per_step_us"]), flush=True)
    llm.close()
    (out_dir() / f"tp_profile_gpu_tp{args.tp}{'_eager' if args.eager else ''}.json").write_text(
        json.dumps(report, indent=1)
    )
    print(json.dumps(report, indent=1), flush=True)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
