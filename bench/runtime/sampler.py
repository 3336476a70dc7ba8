"""The sampler's cost per step: `sample` over a batch of logits, greedy and random rows.

    python -m bench.runtime.sampler                      # CPU, and CUDA where present
    python -m bench.runtime.sampler --device cuda --batches 1,32,64 --vocab 65536

For each batch size and row mix it times `jamba_runtime.engine.sampler.sample` (median of
`--repeats`, after warm-up; on CUDA each call ends in the host read of the tokens, as in a step)
and counts the PyTorch ops it dispatches: on a GPU each op is one kernel launch or more, a few
microseconds of host time that a decode step cannot hide. The reference in the same run is the
floor of any sampler: one `argmax` over the same logits read back to the host (`argmax` column);
`ratio` is the sampler's time over it.

Mixes: `greedy` (temperature 0), `temp1` (temperature 1, nothing else: the OpenAI API's default),
`topk_topp` (temperature 0.7, top-k 50, top-p 0.9, each row seeded), `mixed` (a quarter each of
greedy, temp1, topk_topp and min-p 0.05 with a repetition penalty of 1.1).

`--engine`: the same mixes through the engine's decode steps, ms/step beside the greedy step of
the same run (`step ratio`). On random weights greedy rows tend to pick the same token each step,
so the MoE routes every row to the same experts and a greedy step can be slower than a random
one: compare a mix across code versions (an older checkout's run in the same call). Shapes:
Mini's cut to 8 layers with random weights (`--load-format dummy`) on CUDA, the tiny model's
layers with a 65,536-token vocab on CPU. A batch of `--engine-batch` 256-token prompts is
prefilled, then `--engine-steps` decode steps are timed.

The code measured is whatever `jamba_runtime` imports: for a before/after, run it from an older
checkout's root with this file copied in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jamba_runtime
from bench.common.paths import RESULTS
from bench.common.tables import markdown_table
from jamba_runtime import SamplingParams
from jamba_runtime.engine.sampler import sample

DEFAULT_OUT = RESULTS / "sampler.json"
MIXES = ("greedy", "temp1", "topk_topp", "mixed")


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it (views and factory calls included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


def row_params(mix: str, i: int) -> SamplingParams:
    kinds = {
        "greedy": SamplingParams(temperature=0),
        "temp1": SamplingParams(temperature=1.0),
        "topk_topp": SamplingParams(temperature=0.7, top_k=50, top_p=0.9, seed=1000 + i),
        "minp_penalty": SamplingParams(temperature=0.8, min_p=0.05, repetition_penalty=1.1),
    }
    if mix == "mixed":
        return list(kinds.values())[i % 4]
    return kinds[mix]


def inputs(
    mix: str, batch: int, vocab: int, device: torch.device
) -> tuple[list[SamplingParams], list[int], list[torch.Tensor]]:
    params = [row_params(mix, i) for i in range(batch)]
    positions = [17 + i for i in range(batch)]  # tokens each row's request has made so far
    seen = [
        torch.arange(0, vocab, vocab // 512)  # on the host, as the engine passes them
        if p.repetition_penalty != 1.0
        else torch.empty(0, dtype=torch.long)
        for p in params
    ]
    return params, positions, seen


def time_call(fn: Any, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(device: torch.device, batches: list[int], vocab: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(batch)).to(device) * 4
        argmax_s = time_call(lambda: torch.argmax(logits, -1).tolist(), repeats)
        for mix in MIXES:
            params, positions, seen = inputs(mix, batch, vocab, device)
            with OpCounter() as counter:
                tokens = sample(logits, params, positions, seen)
            assert all(0 <= t < vocab for t in tokens), tokens
            s = time_call(lambda: sample(logits, params, positions, seen), repeats)  # noqa: B023 - called now
            rows.append(
                {
                    "device": str(device),
                    "batch": batch,
                    "mix": mix,
                    "ops": counter.ops,
                    "ms": s * 1e3,
                    "argmax_ms": argmax_s * 1e3,
                    "ratio": s / argmax_s,
                }
            )
            print(
                f"{device} b={batch} {mix}: {s * 1e3:.3f} ms, {counter.ops} ops, argmax {argmax_s * 1e3:.3f} ms",
                flush=True,
            )
    return rows


def engine_rows(device: torch.device, batch: int, steps: int) -> list[dict[str, Any]]:
    """Decode ms/step through `LLMEngine.step` for each mix, greedy first (the reference)."""
    import random
    import tempfile

    from bench.serve.gpu import model_dir
    from bench.structured.engine import tiny_65k
    from jamba_runtime import LLM, EngineConfig

    cuda = device.type == "cuda"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # CUDA: Mini-8's shape, random weights; CPU: the tiny layers at Jamba's 65,536-token vocab
        # (the structured benches' model), so the sampler's share of a step is as on the GPU.
        d = model_dir(argparse.Namespace(device="cuda", layers=8), Path(tmp)) if cuda else tiny_65k(Path(tmp))
        llm = LLM(
            str(d),
            device=str(device),
            dtype="bfloat16" if cuda else "float32",
            load_format="dummy" if cuda else "auto",
            engine=EngineConfig(max_num_seqs=batch, cache_memory_gb=None if cuda else 2),
        )
        engine = llm.engine
        rng = random.Random(0)
        greedy_ms = None
        for mix in MIXES:
            for i in range(batch):
                p = dataclasses.replace(row_params(mix, i), max_tokens=steps + 8, ignore_eos=True)
                engine.add_request([rng.randrange(20, 60000) for _ in range(256)], p, f"{mix}-{i}")
            while any(not s.output_token_ids for s in engine.requests.values()):
                engine.step()
            for _ in range(3):
                engine.step()
            t = time.perf_counter()
            for _ in range(steps):
                engine.step()
            ms = (time.perf_counter() - t) / steps * 1e3
            for rid in list(engine.requests):
                engine.abort(rid)
            greedy_ms = ms if mix == "greedy" else greedy_ms
            assert greedy_ms is not None
            rows.append(
                {
                    "device": str(device),
                    "batch": batch,
                    "mix": mix,
                    "step_ms": ms,
                    "step_ratio": ms / greedy_ms,
                }
            )
            print(
                f"engine {device} b={batch} {mix}: {ms:.2f} ms/step ({ms / greedy_ms:.3f}x greedy)",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--vocab", type=int, default=65536, help="Jamba's vocab size by default")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--engine", action="store_true", help="also time the engine's decode steps per mix")
    ap.add_argument("--engine-batch", type=int, default=64)
    ap.add_argument("--engine-steps", type=int, default=32)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for d in devices:
        rows += run(torch.device(d), batches, args.vocab, args.repeats)
    print()
    print(
        markdown_table(
            ["device", "batch", "mix", "ops", "ms", "argmax ms", "ratio"],
            [
                [
                    r["device"],
                    str(r["batch"]),
                    r["mix"],
                    str(r["ops"]),
                    f"{r['ms']:.3f}",
                    f"{r['argmax_ms']:.3f}",
                    f"{r['ratio']:.1f}",
                ]
                for r in rows
            ],  # fmt: skip
            left=(0, 2),
        )
    )
    steps_rows = []
    if args.engine:
        for d in devices:
            steps_rows += engine_rows(torch.device(d), args.engine_batch, args.engine_steps)
        print()
        print(
            markdown_table(
                ["device", "batch", "mix", "ms/step", "step ratio"],
                [
                    [r["device"], str(r["batch"]), r["mix"], f"{r['step_ms']:.2f}", f"{r['step_ratio']:.3f}"]
                    for r in steps_rows
                ],
                left=(0, 2),
            )
        )
    meta = {
        "jamba_runtime": jamba_runtime.__version__ if hasattr(jamba_runtime, "__version__") else None,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "vocab": args.vocab,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "engine": steps_rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
