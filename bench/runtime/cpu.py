"""Prefill and decode speed of our runtime vs transformers' `JambaForCausalLM`, float32 on CPU.

Both sides load the same checkpoint files; for each shape (the tiny test model and a ~100M random
Jamba) the bench prints tokens/s side by side with the ratio ours/transformers and the hardware
limit, and writes everything to JSON.

    python -m bench.runtime.cpu                 # defaults: prompt 512, 64 new tokens (~10 min on 2 cores)
    python -m bench.runtime.cpu --quick         # smoke run (~1 min)
    python -m bench.runtime.cpu --threads 1 --prompt-len 256 --out /tmp/r.json

Method (also printed and stored in the JSON):
  prefill  one forward over a batch-1 prompt of P tokens: ours `model(input_ids)` (full logits),
           transformers `model(input_ids).logits`, both under `torch.inference_mode()`;
           tokens/s = P / median time. The two sides alternate call by call after a warm-up.
  decode   greedy generation of N new tokens after a P-token prompt, batch 1 and 4. Ours:
           `LLM.generate` with token-id prompts and `SamplingParams(max_tokens=N, temperature=0,
           ignore_eos=True)`; transformers: `model.generate(..., do_sample=False,
           max_new_tokens=N, min_new_tokens=N)` with the generation config's `eos_token_id`
           cleared (the equivalent of `ignore_eos`: with an eos id set, `min_new_tokens` would mask
           eos logits and change greedy picks). A forward hook on each side's `lm_head` stamps
           the end of every forward step, so decode time is measured inside one call: from the
           step that yields the first token to the last step (N - 1 steps, sampling and
           bookkeeping included); tokens/s = batch * (N - 1) / median decode time.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.common.cpu_hardware import Contention, cpu_model, measure_hardware
from bench.common.paths import REPO, RESULTS
from bench.common.tables import markdown_table
from bench.runtime.cpu_floors import decode_bound, param_counts, prefill_bound
from bench.runtime.cpu_shapes import SHAPE_100M
from bench.runtime.cpu_sides import Ours, Theirs
from jamba_runtime.config import JambaConfig
from jamba_runtime.tiny import make_tiny_model, write_random_checkpoint
from jamba_runtime.tokenizer.tiny import tiny_model_token_ids, write_tiny_tokenizer

DEFAULT_OUT = RESULTS / "runtime_cpu.json"

METHOD = {
    "prefill": "P / median time of one batch-1 forward over P tokens (full logits); sides alternate after a warm-up",
    "decode": (
        "batch * (N - 1) / median decode time, decode time measured inside one generate call from the "
        "LM-head call that yields token 1 to the one that yields token N (forward hooks); greedy, eos "
        "ignored (ours ignore_eos=True; transformers eos_token_id cleared, min_new_tokens=N); sides "
        "alternate after a short warm-up"
    ),
    "bound_prefill": "matmul FLOPs per token (2 x active matmul params + causal attention) / measured fp32 matmul rate",
    "bound_decode": (
        "batch / (bytes read per step (all weights but the embedding and unrouted experts, expected "
        "distinct experts for the batch, KV, Mamba state) / measured read bandwidth)"
    ),
}


@dataclass
class Row:
    shape: str
    metric: str
    ours: float
    transformers: float
    bound: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.transformers if self.transformers > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "metric": self.metric,
            "unit": "tokens/s",
            "ours": self.ours,
            "transformers": self.transformers,
            "ratio_ours_over_transformers": self.ratio,
            "hardware_bound": self.bound,
            "ours_fraction_of_bound": self.ours / self.bound if self.bound else None,
            **self.detail,
        }


def prompts(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """Random ids above the 20 special tokens of the tiny tokenizer."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(20, vocab_size, (batch, length), generator=gen)


def alternate(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Warm each fn up once, then time them in turn `repeats` times; returns times per fn."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return times


def bench_shape(
    name: str, directory: Path, args: argparse.Namespace, hw: dict[str, float], log: Callable[[str], None]
) -> tuple[list[Row], dict[str, Any]]:
    config = JambaConfig.from_file(directory)
    ours, theirs = Ours(directory), Theirs(directory)
    counts = param_counts(ours.model, config)
    hf_total = sum(p.numel() for p in theirs.model.parameters())
    log(
        f"[{name}] parameters: {counts['total']:,} (ours; transformers {hf_total:,}), "
        f"active matmul params per token {counts['active_matmul_per_token']:,}"
    )
    p, n, reps = args.prompt_len, args.new_tokens, args.repeats
    rows: list[Row] = []
    info: dict[str, Any] = {
        "config": config.to_dict(),
        "parameters": counts,
        "transformers_parameters": hf_total,
    }

    ids = prompts(config.vocab_size, 1, p, seed=1)
    watch = Contention()
    with torch.inference_mode():
        max_diff = float((ours.prefill(ids) - theirs.prefill(ids)).abs().max())
    info["prefill_logits_max_abs_diff"] = max_diff
    t_ours, t_hf = alternate([lambda: ours.prefill(ids), lambda: theirs.prefill(ids)], reps)
    rows.append(
        Row(
            name,
            f"prefill b=1 P={p}",
            p / statistics.median(t_ours),
            p / statistics.median(t_hf),
            prefill_bound(config, counts, p, hw),
            {"ours_times_s": t_ours, "transformers_times_s": t_hf, "others_cpu_share": watch.others_share()},
        )
    )
    log(
        f"[{name}] {rows[-1].metric}: ours {rows[-1].ours:.1f}, transformers {rows[-1].transformers:.1f} tok/s"
    )

    for batch in (1, 4):
        ids = prompts(config.vocab_size, batch, p, seed=2 + batch)
        watch = Contention()
        runs: dict[str, list[tuple[float, float, list[list[int]]]]] = {"ours": [], "hf": []}
        for side in (ours, theirs):
            side.generate(ids, min(n, 4))  # warm-up at the same prompt shape
        for _ in range(reps):
            for side, key in [(ours, "ours"), (theirs, "hf")]:
                runs[key].append(timed_generate(side, ids, n))
        tokens = {key: r[-1][2] for key, r in runs.items()}

        def rate(key: str) -> float:
            return batch * (n - 1) / statistics.median(d for _, d, _ in runs[key])

        same = tokens["ours"] == tokens["hf"]
        agree = [_common_prefix(a, b) for a, b in zip(tokens["ours"], tokens["hf"], strict=True)]
        rows.append(
            Row(
                name,
                f"decode b={batch} N={n}",
                rate("ours"),
                rate("hf"),
                decode_bound(config, counts, batch, p + n // 2, hw),
                {
                    "ours_ttft_s": [t for t, _, _ in runs["ours"]],
                    "ours_decode_s": [d for _, d, _ in runs["ours"]],
                    "transformers_ttft_s": [t for t, _, _ in runs["hf"]],
                    "transformers_decode_s": [d for _, d, _ in runs["hf"]],
                    "greedy_match": same,
                    "greedy_agreeing_prefix": agree,
                    "others_cpu_share": watch.others_share(),
                },
            )
        )
        info[f"greedy_match_b{batch}"] = same
        ttft = {k: statistics.median(t for t, _, _ in r) for k, r in runs.items()}
        log(
            f"[{name}] {rows[-1].metric}: ours {rows[-1].ours:.1f}, transformers {rows[-1].transformers:.1f} "
            f"tok/s (time to first token {ttft['ours']:.2f}s vs {ttft['hf']:.2f}s); greedy tokens "
            + ("match" if same else f"differ (agreeing prefix {agree})")
        )
    return rows, info


def timed_generate(side: Ours | Theirs, ids: torch.Tensor, n: int) -> tuple[float, float, list[list[int]]]:
    """Generate `n` tokens per row; return (time to first token, decode time, tokens).

    Each forward step of either implementation ends with one LM-head call (ours runs it even for a
    prefill chunk that samples nothing), so a forward hook on `lm_head` timestamps every step. The
    last `n` calls are the step that produced the first token and the `n - 1` decode steps: decode
    time = last - n-th from last, covering `n - 1` full steps (sampling, detokenising and
    scheduling included); time to first token = n-th from last - call start.
    """
    stamps: list[float] = []
    handle = side.lm_head.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))
    try:
        t0 = time.perf_counter()
        tokens = side.generate(ids, n)
    finally:
        handle.remove()
    assert len(stamps) >= n, f"{type(side).__name__}: {len(stamps)} LM-head calls for {n} tokens"
    assert all(len(t) == n for t in tokens), "every row generates exactly n tokens (eos ignored)"
    return stamps[-n] - t0, stamps[-1] - stamps[-n], tokens


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- output --------------------------------------------------------------------------------------
def format_table(rows: list[Row]) -> str:
    head = (
        "shape",
        "metric (tokens/s)",
        "ours",
        "transformers",
        "ours/tf",
        "hw bound",
        "ours/bound",
        "others' CPU",
    )
    cells = [
        (
            r.shape,
            r.metric,
            f"{r.ours:,.1f}",
            f"{r.transformers:,.1f}",
            f"{r.ratio:.2f}",
            f"{r.bound:,.0f}" if r.bound else "-",
            f"{r.ours / r.bound:.1%}" if r.bound else "-",
            f"{r.detail['others_cpu_share']:.0%}" if r.detail.get("others_cpu_share") is not None else "-",
        )
        for r in rows
    ]
    return markdown_table(head, cells, left=(0, 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)"
    )
    ap.add_argument("--prompt-len", type=int, default=512, help="prompt tokens P (default 512)")
    ap.add_argument("--new-tokens", type=int, default=64, help="generated tokens N (default 64)")
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed calls per measurement after the warm-up (default 5)"
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)})"
    )
    ap.add_argument("--shapes", default="tiny,100m", help="comma-separated subset of: tiny, 100m")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: P=64, N=16, 1 repeat, small hardware probes"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.prompt_len, args.new_tokens, args.repeats = 64, 16, 1
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2: decode time runs from the first token to the last")
    if args.prompt_len < 1 or args.repeats < 1 or args.threads < 1:
        ap.error("--prompt-len, --repeats and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(shapes) - {"tiny", "100m"}
    if unknown:
        print(f"unknown shape(s) {sorted(unknown)}: use tiny and/or 100m", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    load_start = os.getloadavg()
    hw = measure_hardware(args.quick)
    hardware = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        **hw,
    }
    software = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    log(
        f"{hardware['cpu_model']}, {hardware['threads']} threads; fp32 matmul {hw['matmul_gflops']:.1f} GFLOP/s, "
        f"read bandwidth {hw['read_bandwidth_gb_s']:.1f} GB/s; torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    log(f"P={args.prompt_len}, N={args.new_tokens}, {args.repeats} timed repeat(s) after a warm-up")

    rows: list[Row] = []
    shape_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jamba-bench-") as tmp:
        for shape in shapes:
            directory = Path(tmp) / shape
            if shape == "tiny":
                make_tiny_model(directory)
            else:
                config = JambaConfig.from_dict({**SHAPE_100M, **tiny_model_token_ids()}, source="100m shape")
                write_random_checkpoint(directory, config, seed=0)
                # LLM needs a tokenizer even for token-id prompts (it detokenises the output).
                write_tiny_tokenizer(directory, vocab_size=config.vocab_size)
            rows_, info = bench_shape(shape, directory, args, hw, log)
            rows += rows_
            shape_info[shape] = info
            gc.collect()  # both models of this shape go before the next loads

    elapsed = time.perf_counter() - start
    table = format_table(rows)
    print()
    print(table)
    print()
    if "tiny" in shape_info:
        match = shape_info["tiny"]["greedy_match_b1"] and shape_info["tiny"]["greedy_match_b4"]
        print(
            f"greedy match: {'yes' if match else 'no'} (tiny model, batch 1 and 4, {args.new_tokens} tokens)"
        )
    for shape, info in shape_info.items():
        c = info["parameters"]
        print(
            f"{shape}: {c['total']:,} parameters, {c['active_matmul_per_token']:,} active matmul params/token, "
            f"prefill logits max |ours - transformers| = {info['prefill_logits_max_abs_diff']:.2e}"
        )
    shares = [r.detail.get("others_cpu_share") or 0.0 for r in rows]
    if max(shares, default=0.0) > 0.05:
        print(
            f"WARNING: other processes used up to {max(shares):.0%} of all cores while rows were measured "
            "(column others' CPU); those rows are unreliable: rerun on an idle machine"
        )
    print(
        f"hardware: {hardware['cpu_model']}, {hardware['threads']} threads, fp32 matmul {hw['matmul_gflops']:.1f} GFLOP/s, "
        f"read bandwidth {hw['read_bandwidth_gb_s']:.1f} GB/s"
    )
    print("method:")
    for k, v in METHOD.items():
        print(f"  {k}: {v}")
    print(f"total time {elapsed:.0f}s")

    result = {
        "bench": "runtime_cpu",
        "command": " ".join(["python -m", __spec__.name, *(argv if argv is not None else sys.argv[1:])]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "dtype": "float32",
            "device": "cpu",
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "quick": args.quick,
        },
        "hardware": hardware,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "software": software,
        "method": METHOD,
        "shapes": shape_info,
        "rows": [r.to_json() for r in rows],
        "table": table,
        "elapsed_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
