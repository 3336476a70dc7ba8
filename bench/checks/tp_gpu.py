"""The tensor-parallel engine on GPUs: 2 NCCL ranks against one process, same checkpoint.

    python -m bench.checks.tp_gpu                         # 2 GPUs (nvidia-h100-x2), tiny model, < 1 min
    python -m bench.checks.tp_gpu --tp 4 --dtype bfloat16
    python -m bench.checks.tp_gpu --device cpu            # gloo processes: a logic check

Writes a random tiny checkpoint, generates greedily with `LLM(device="cuda")` and with
`LLM(device="cuda", tensor_parallel_size=N)` (chunked prefill, a batch, a restored prefix),
compares the tokens (float32 by default, where the two should agree exactly up to summation
order), and times decode steps at batch 1 and 8 on each. JSON to `$OUT/tp_gpu_check.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common.paths import out_dir
from jamba_runtime import LLM, EngineConfig, SamplingParams
from jamba_runtime.tiny import make_tiny_model

PROMPTS = [[1, *range(40, 90)], [1, 7, 300, 12], [1, *range(500, 531)], [1, 9, 9, 9, 81]]
PREFIX = [1, 9, 88, 301, 14, 15, 16]


def outputs(llm: LLM) -> list[list[int]]:
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    outs = [o.token_ids for o in llm.generate(PROMPTS, greedy)]
    llm.save_prefix(PREFIX, key="p")
    restored = llm.generate([[*PREFIX, 500, 501], [*PREFIX, 7]], greedy, prefix_snapshot="p")
    return [*outs, *(o.token_ids for o in restored)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_ms(llm: LLM, batch: int, steps: int = 32) -> float:
    engine = llm.engine
    params = SamplingParams(max_tokens=steps + 40, temperature=0, ignore_eos=True)
    ids = [engine.add_request([1, *range(100 + i, 164 + i)], params).request_id for i in range(batch)]
    for _ in range(8):
        engine.step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync()
    dt = (time.perf_counter() - t) / steps
    for i in ids:
        engine.abort(i)
    return 1e3 * dt


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=32, block_size=16, cache_memory_gb=0.5)
    report: dict[str, Any] = {"gpus": torch.cuda.device_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "tiny")
        single = LLM(model=model_dir, device=args.device, dtype=args.dtype, engine=engine)
        ref = outputs(single)
        report["single"] = {"decode_b1_ms": decode_ms(single, 1), "decode_b8_ms": decode_ms(single, 8)}
        del single
        with LLM(
            model=model_dir, device=args.device, dtype=args.dtype, engine=engine, tensor_parallel_size=args.tp
        ) as tp:
            got = outputs(tp)
            report["tp"] = {"decode_b1_ms": decode_ms(tp, 1), "decode_b8_ms": decode_ms(tp, 8),
                            "cuda_graphs": tp.engine.runner.graphs is not None}  # fmt: skip
            print(json.dumps(report), flush=True)
            t = time.perf_counter()
        report["close_s"] = time.perf_counter() - t
    prefix = [next((k for k in range(len(b)) if a[k] != b[k]), len(b)) for a, b in zip(got, ref, strict=True)]
    report["identical"] = sum(a == b for a, b in zip(got, ref, strict=True))
    report["sequences"] = len(ref)
    report["agreeing_prefix"] = prefix
    print(json.dumps(report, indent=1))
    (out_dir() / "tp_gpu_check.json").write_text(json.dumps(report, indent=1))
    sys.stdout.flush()
    # An NCCL group stays open after close (`Workers.stop`): leave without its teardown.
    os._exit(0 if report["identical"] == report["sequences"] or args.dtype != "float32" else 1)


if __name__ == "__main__":
    sys.exit(main())
