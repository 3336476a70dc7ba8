"""`bench.runtime.gpu`'s rows, method texts (stored in its JSON) and command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ROWS = ("decode", "prefill", "concurrent", "ttft", "longest", "structured")

METHOD = {
    "decode": (
        "ms/token = decode time / (N - 1), decode time from the LM-head call that yields the last sequence's "
        "first token to the one that yields the final token (CUDA events from forward hooks); tokens/s = "
        "tokens sampled in that window / its time; greedy, eos ignored"
    ),
    "concurrent": "total tokens/s = b * N / (submit -> final token), prefill included; decode tokens/s as above",
    "prefill": "P / median time of one batch-1 forward over P tokens (full logits), CUDA events; sides alternate",
    "ttft": (
        "submit -> LM-head call yielding token 1, best of the runs; peak = max_memory_allocated during the call; own peak = "
        "weights (+ our engine cache) + what the call added over what was resident"
    ),
    "longest": "memory_plan.plan_memory for one sequence (weights, KV/token, slots, activations of one chunk), "
    "capped by max_position_embeddings; verified by one engine prefill",
    "floor_prefill": "(2 x active matmul params x P + causal attention FLOPs) / measured bf16 matmul rate",
    "floor_decode": (
        "b / (bytes read per step: weights but embedding and unrouted experts (expected distinct experts "
        "for b tokens), KV at context P + N/2, Mamba state read + written) / measured copy bandwidth)"
    ),
    "transformers_long_skip": (
        "skipped when weights + 3 float32 (d_inner x P x d_state) scan tensors pass the card's memory, or "
        "when its time extrapolated linearly in P from its longest measured prefill passes the budget"
    ),
    "logits_rel_err": "|ours - transformers|_F / |transformers|_F over the prefill logits, float32 accumulation",
    "structured": (
        "generated tokens / wall time of the whole generate, JSON Schemas from tests/data/schemas cycled over "
        "the batch (temperature 1), then the same requests unconstrained with max_tokens = each constrained "
        "output's length and ignore_eos; median of --structured-repeats; 65,536-token BPE tokenizer"
    ),
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# (device is cpu, quick) -> defaults. Lengths on CPU are scaled down: the tiny model is a logic check.
_PROFILES: dict[tuple[bool, bool], dict[str, Any]] = {
    (False, False): dict(
        decode_prompt_len=1024,
        new_tokens=128,
        prefill_lens="2048",
        concurrent=64,
        concurrent_prompt_len=2048,
        tf_ref_batch=8,
        ttft_lens="32768,131072",
        longest_cap=0,
        chunk=8192,
        repeats=3,
        prefill_repeats=3,
        concurrent_repeats=2,
        ttft_repeats=2,
        budget_s=420.0,
        reserve_s=30.0,
    ),
    (False, True): dict(
        decode_prompt_len=1024,
        new_tokens=32,
        prefill_lens="1024",
        concurrent=16,
        concurrent_prompt_len=1024,
        tf_ref_batch=4,
        ttft_lens="8192,32768",
        longest_cap=65536,
        chunk=8192,
        repeats=2,
        prefill_repeats=2,
        concurrent_repeats=1,
        ttft_repeats=1,
        budget_s=150.0,
        reserve_s=15.0,
    ),
    (True, False): dict(
        decode_prompt_len=64,
        new_tokens=16,
        prefill_lens="256",
        concurrent=8,
        concurrent_prompt_len=64,
        tf_ref_batch=2,
        ttft_lens="512,1024",
        longest_cap=2048,
        chunk=256,
        repeats=2,
        prefill_repeats=2,
        concurrent_repeats=1,
        ttft_repeats=1,
        budget_s=600.0,
        reserve_s=30.0,
    ),
    (True, True): dict(
        decode_prompt_len=32,
        new_tokens=8,
        prefill_lens="64",
        concurrent=4,
        concurrent_prompt_len=32,
        tf_ref_batch=2,
        ttft_lens="128,256",
        longest_cap=512,
        chunk=64,
        repeats=1,
        prefill_repeats=1,
        concurrent_repeats=1,
        ttft_repeats=1,
        budget_s=120.0,
        reserve_s=10.0,
    ),
}


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """`bench.runtime.gpu`'s arguments, with the defaults of its profile (device, --quick) filled in.
    Exits with argparse's message for invalid rows or sizes."""
    ap = argparse.ArgumentParser(prog="python -m bench.runtime.gpu", description=description)
    ap.add_argument(
        "--device", default="cuda", help="cuda (default) or cpu (tiny shape, float32: a logic check)"
    )
    ap.add_argument(
        "--config", type=Path, help="a Jamba config.json (default: Jamba-1.5-Mini on cuda, tiny on cpu)"
    )
    ap.add_argument("--layers", type=int, default=8, help="layers kept from the config (default 8)")
    ap.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated rows to run, of {', '.join(ROWS)}"
    )
    ap.add_argument("--decode-prompt-len", type=int, help="prompt tokens of the batch-1 decode row (1024)")
    ap.add_argument("--new-tokens", type=int, help="new tokens per sequence in the decode rows (128)")
    ap.add_argument("--prefill-lens", help="comma-separated P of the prefill (logits check) rows (2048)")
    ap.add_argument("--concurrent", type=int, help="requests submitted at once in the concurrent row (64)")
    ap.add_argument("--concurrent-prompt-len", type=int, help="prompt tokens per concurrent request (2048)")
    ap.add_argument(
        "--tf-ref-batch",
        type=int,
        help="smaller batch run by both sides when transformers fails at the full one (8); 0: off",
    )
    ap.add_argument("--ttft-lens", help="comma-separated prompt lengths of the TTFT rows (32768,131072)")
    ap.add_argument("--longest-cap", type=int, help="cap on the longest-context check (0: none)")
    ap.add_argument("--chunk", type=int, help="engine max_num_batched_tokens: the prefill chunk (8192)")
    ap.add_argument("--repeats", type=int, help="timed runs per side of the batch-1 decode row")
    ap.add_argument("--prefill-repeats", type=int, help="timed calls per side of a prefill row")
    ap.add_argument("--concurrent-repeats", type=int, help="timed runs per side of a concurrent row")
    ap.add_argument("--ttft-repeats", type=int, help="timed runs of ours per TTFT row (transformers: 1)")
    ap.add_argument("--budget-s", type=float, help="skip rows that start past this many seconds (420)")
    ap.add_argument(
        "--reserve-s", type=float, help="seconds kept back when deciding to try a long transformers prefill"
    )
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-model decode loop")
    ap.add_argument(
        "--skip-transformers",
        action="store_true",
        help="ours alone (no transformers model, rows and estimates): for runs that time our changes",
    )
    ap.add_argument(
        "--scan-variants",
        help="comma-separated selective-scan prefill kernels (chunked, sequential) to run each TTFT row with, "
        "one after the other (default: the runtime's own choice only)",
    )
    ap.add_argument(
        "--structured-batches", default="1,32", help="batches of the structured-output row (1,32)"
    )
    ap.add_argument("--structured-repeats", type=int, default=2, help="timed runs per structured row side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON path (default $OUT/runtime_gpu.json, else bench/results/)")
    ap.add_argument("--quick", action="store_true", help="shorter lengths and fewer repeats")
    args = ap.parse_args(argv)
    for key, value in _PROFILES[(args.device == "cpu", args.quick)].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.prefill_lens = _ints(str(args.prefill_lens))
    args.ttft_lens = _ints(str(args.ttft_lens))
    args.structured_batches = _ints(str(args.structured_batches))
    args.scan_variants = [v.strip() for v in (args.scan_variants or "").split(",") if v.strip()]
    bad = [v for v in args.scan_variants if v not in ("chunked", "sequential")]
    if bad:
        ap.error(f"--scan-variants {','.join(bad)}: choose from chunked, sequential")
    args.rows = [x.strip() for x in args.rows.split(",") if x.strip()]
    unknown = [x for x in args.rows if x not in ROWS]
    if unknown or not args.rows:
        ap.error(f"--rows {','.join(unknown) or '(empty)'}: choose from {', '.join(ROWS)}")
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2: decode time runs from the first token to the last")
    sizes = [
        args.decode_prompt_len,
        args.concurrent,
        args.concurrent_prompt_len,
        args.chunk,
        *args.prefill_lens,
    ]
    if min(sizes) < 1 or min(args.ttft_lens, default=1) < 2 or args.tf_ref_batch < 0 or args.longest_cap < 0:
        ap.error(
            "lengths, batch sizes and --chunk must be positive (--tf-ref-batch, --longest-cap: 0 is off)"
        )
    return args
