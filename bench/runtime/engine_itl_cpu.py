"""Inter-token latency of running streams while long prompts arrive, on CPU (the reference path).

    python -m bench.runtime.engine_itl_cpu                  # prompts 256..8192; bench/results/engine_itl_cpu.json
    python -m bench.runtime.engine_itl_cpu --lengths 256,2048 --streams 15

`--streams` requests (16-token prompts, greedy, no end) decode on the tiny model with the engine's
default config; then, one at a time, a prompt of each length arrives (one new token asked) and the
engine steps until its token is out. A row gives, for the steps while that prompt was prefilled,
the running streams' inter-token latency (time between one stream's consecutive tokens: p50, p99,
max), the prompt's time to first token, and how many steps it took; the first row is the streams
alone. The code measured is whatever `jamba_runtime` imports (for a "before", run it from the root
of an older checkout with this file copied in). CPU timings on a shared machine are noisy: the JSON records the other processes' share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import jamba_runtime
from bench.common.cpu_hardware import Contention, cpu_model
from bench.common.paths import RESULTS
from jamba_runtime import LLM, EngineConfig, SamplingParams
from jamba_runtime.tiny import make_tiny_model

DEFAULT_OUT = RESULTS / "engine_itl_cpu.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(model: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {}
    if args.long_prefill is not None:  # older engines have no such field: pass it only when asked
        kwargs["engine"] = EngineConfig(long_prefill_token_threshold=args.long_prefill)
    llm = LLM(model=model, **kwargs)
    engine = llm.engine
    gen = torch.Generator().manual_seed(0)
    vocab = llm.config.vocab_size
    streams = set()
    for i in range(args.streams):
        prompt = torch.randint(3, vocab, (16,), generator=gen).tolist()
        engine.add_request(
            prompt, SamplingParams(max_tokens=1_000_000, temperature=0, ignore_eos=True), f"s{i}"
        )
        streams.add(f"s{i}")
    last: dict[str, float] = {}
    while len(last) < len(streams):  # every stream has its first token
        for out in engine.step():
            last[out.request_id] = time.perf_counter()

    def steps_until(done: Any, min_steps: int) -> tuple[list[float], int]:
        itl, steps = [], 0
        while steps < min_steps or not done():
            outs = engine.step()
            now = time.perf_counter()
            steps += 1
            for out in outs:
                if out.request_id in streams:
                    itl.append(now - last[out.request_id])
                    last[out.request_id] = now
        return itl, steps

    rows = []
    load = Contention()
    itl, steps = steps_until(lambda: True, args.baseline_steps)
    rows.append(_row("none (streams alone)", itl, None, steps, load.others_share()))
    for length in args.lengths:
        prompt = torch.randint(3, vocab, (length,), generator=gen).tolist()
        load = Contention()
        t0 = time.perf_counter()
        seq = engine.add_request(prompt, SamplingParams(max_tokens=1, temperature=0), f"p{length}")
        itl, steps = steps_until(lambda seq=seq: seq.finished, 1)
        ttft = time.perf_counter() - t0
        rows.append(_row(f"{length:,} tokens", itl, ttft, steps, load.others_share()))
        print(f"prompt {length} done", file=sys.stderr)
    return rows


def _row(
    arriving: str, itl: list[float], ttft: float | None, steps: int, others: float | None
) -> dict[str, Any]:
    return {
        "arriving_prompt": arriving,
        "itl_p50_ms": statistics.median(itl) * 1e3,
        "itl_p99_ms": percentile(itl, 0.99) * 1e3,
        "itl_max_ms": max(itl) * 1e3,
        "prompt_ttft_s": ttft,
        "steps": steps,
        "others_cpu_share": others,
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=63)
    ap.add_argument("--lengths", default="256,1024,2048,8192")
    ap.add_argument("--baseline-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--long-prefill",
        type=int,
        default=None,
        help="EngineConfig.long_prefill_token_threshold (default: the engine's own default)",
    )
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before, after)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    args.lengths = [int(n) for n in args.lengths.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(make_tiny_model(Path(tmp) / "tiny"), args)
    print(
        f"{cpu_model()}, {args.threads} thread(s), torch {torch.__version__}; jamba_runtime from "
        f"{Path(jamba_runtime.__file__).parent}; {args.streams} streams decoding, tiny model; "
        f"long_prefill_token_threshold {'default' if args.long_prefill is None else args.long_prefill}"
    )
    print("| prompt arriving | ITL p50 ms | ITL p99 ms | ITL max ms | prompt TTFT s | steps | others' CPU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ttft = "-" if r["prompt_ttft_s"] is None else f"{r['prompt_ttft_s']:.2f}"
        share = "-" if r["others_cpu_share"] is None else f"{r['others_cpu_share']:.0%}"
        print(
            f"| {r['arriving_prompt']} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} | {r['itl_max_ms']:.1f} | "
            f"{ttft} | {r['steps']} | {share} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "label": args.label,
                "args": {k: str(v) for k, v in vars(args).items()},
                "cpu": cpu_model(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
