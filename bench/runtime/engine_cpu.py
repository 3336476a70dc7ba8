"""Engine throughput on CPU: 16 concurrent requests as one continuous batch, the same requests one
after another, and transformers' batched `generate`, on the same checkpoint, side by side.

    python -m bench.runtime.engine_cpu            # tiny + ~100M shapes, writes bench/results/engine_cpu.json
    python -m bench.runtime.engine_cpu --quick    # a smoke run

Prompts have different lengths (so transformers pads its batch on the left; our engine packs).
Every side generates exactly N new tokens per request, greedily (end-of-sequence ignored).
Throughput = all generated tokens / wall time of the whole run (prefill included), median of repeats.
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

from bench.common.cpu_hardware import Contention, cpu_model
from bench.common.paths import RESULTS
from bench.runtime.cpu_shapes import SHAPE_100M
from jamba_runtime import LLM, SamplingParams
from jamba_runtime.config import JambaConfig
from jamba_runtime.tiny import make_tiny_model, write_random_checkpoint

DEFAULT_OUT = RESULTS / "engine_cpu.json"


def make_prompts(vocab: int, count: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (count,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lens]


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def hf_batched(model: Any, prompts: list[list[int]], n: int, pad: int) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad
        )
    return out[:, width:].tolist()


def bench_shape(name: str, directory: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import transformers

    llm = LLM(model=directory)
    hf = transformers.JambaForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    prompts = make_prompts(llm.config.vocab_size, args.requests, args.min_prompt, args.max_prompt, seed=1)
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    total = args.requests * args.new_tokens
    rows = []
    load = Contention()
    t_batch, batch_out = timed(lambda: llm.generate(prompts, params), args.repeats)
    t_serial, serial_out = timed(lambda: [llm.generate([p], params)[0] for p in prompts], args.repeats)
    t_hf, hf_out = timed(lambda: hf_batched(hf, prompts, args.new_tokens, 0), args.repeats)
    others = load.others_share()
    same_serial = [o.token_ids for o in batch_out] == [o.token_ids for o in serial_out]
    same_hf = [o.token_ids for o in batch_out] == hf_out
    for label, t in [
        (f"ours: {args.requests} concurrent (continuous batch)", t_batch),
        ("ours: one after another", t_serial),
        ("transformers: batched generate", t_hf),
    ]:
        rows.append({"shape": name, "run": label, "seconds": t, "tokens_per_s": total / t})
    for r in rows:
        r.update(
            {
                "vs_batched_ours": r["tokens_per_s"] / rows[0]["tokens_per_s"],
                "outputs_equal_serial": same_serial,
                "outputs_equal_transformers": same_hf,
                "others_cpu_share": others,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--min-prompt", type=int, default=32)
    ap.add_argument("--max-prompt", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--shapes", default="tiny,100m")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 requests, 8 tokens, tiny only")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.quick:
        args.requests, args.new_tokens, args.max_prompt, args.repeats, args.shapes = 4, 8, 64, 1, "tiny"
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            d = Path(tmp) / shape
            if shape == "tiny":
                make_tiny_model(d)
            else:
                make_tiny_model(d)  # tokenizer files; the weights below replace the tiny ones
                cfg = JambaConfig.from_dict({**SHAPE_100M, "eos_token_id": [2, 5], "pad_token_id": 0})
                write_random_checkpoint(d, cfg, seed=0)
            rows += bench_shape(shape, d, args)
    print(
        f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}; {args.requests} requests, prompts "
        f"{args.min_prompt}-{args.max_prompt} tokens, {args.new_tokens} new tokens each, greedy"
    )
    print("| shape | run | s | tokens/s | vs ours batched | others' CPU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        share = "-" if r["others_cpu_share"] is None else f"{r['others_cpu_share']:.0%}"
        print(
            f"| {r['shape']} | {r['run']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r['vs_batched_ours']:.2f} | {share} |"
        )
    for shape in dict.fromkeys(r["shape"] for r in rows):
        r = next(x for x in rows if x["shape"] == shape)
        print(
            f"{shape}: batched outputs equal one-by-one: {r['outputs_equal_serial']}; "
            f"equal transformers: {r['outputs_equal_transformers']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_model(), "rows": rows}, indent=2
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
