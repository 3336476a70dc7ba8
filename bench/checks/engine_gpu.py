"""Engine fast path (packed/paged kernels) vs the reference and padded paths, on one GPU, bf16.

    python -m bench.checks.engine_gpu                    # CUDA, < 5 min on an H100
    TRITON_INTERPRET=1 python -m bench.checks.engine_gpu --smoke   # CPU, tiny only (timings meaningless)

For the tiny model and the Jamba-1.5-Mini shape cut to `--layers` layers (random weights, built by
`bench.common.gpu_models`), one `LLM` engine runs four ways, switched between steps:

  graphs     the fast path with decode steps replayed from CUDA graphs (the engine's default)
  fast       kernel backend `auto`, `ModelRunner.fast_path` on: the packed/paged kernels, eager
  padded     `auto`, fast path off: what the engine ran before (padded Triton kernels + KV gather)
  reference  kernel backend `reference`: the PyTorch `_ref` ops everywhere

Correctness: a mixed batch (prompts of different lengths, a token budget that chunks the longest
while others decode) generated greedily on each path; every step's logits compared with the
reference path's (relative Frobenius error, max over the steps before the first differing greedy
token, after which the paths feed different tokens), and greedy agreement of the outputs.
Speed: decode ms/step at batch 1 and 64 (host work included: `engine.step()` between CUDA syncs,
after the prompts are in), with the bandwidth floor (bytes read per step / measured copy rate).
JSON to `$OUT/engine_gpu_check.json` (else bench/results/). Exit 1 when a fast-path row failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.common.gpu_models import (
    MINI_CONFIG,
    accounting,
    build_models,
    cut_config,
    decode_step_bytes,
    make_llm,
    prompts,
)
from bench.common.gpu_timing import elapsed, log, measure_hardware, watch_runner
from bench.common.paths import out_dir
from jamba_runtime import SamplingParams
from jamba_runtime.config import JambaConfig
from jamba_runtime.kernels.backend import kernel_backend, patch_triton_interpreter
from jamba_runtime.model.modeling import JambaSparseMoeBlock
from jamba_runtime.tiny import TINY_CONFIG
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer

MODES = ("graphs", "fast", "padded", "reference")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def mode(llm: Any, name: str, fast_backend: str) -> Iterator[None]:
    """Run a block on one path (see the module docstring)."""
    runner = llm.engine.runner
    graphs = runner.graphs
    runner.fast_path = name in ("fast", "graphs")
    runner.graphs = graphs if name == "graphs" else None
    try:
        with kernel_backend("reference" if name == "reference" else fast_backend):
            yield
    finally:
        runner.fast_path = True
        runner.graphs = graphs


def generate_recording(
    llm: Any, batch: list[list[int]], n: int
) -> tuple[list[list[int]], list[torch.Tensor], bool]:
    """Greedy outputs, each step's logits (float32, on the host) and whether every step was fast."""
    runner = llm.engine.runner
    steps: list[torch.Tensor] = []
    fast: list[bool] = []

    def recording(logits: torch.Tensor) -> None:
        fast.append(runner.uses_fast_path())
        steps.append(logits.detach().float().cpu())

    undo = watch_runner(runner, recording)
    try:
        outs = llm.generate(batch, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    finally:
        undo()
    return [list(o.token_ids) for o in outs], steps, all(fast)


def compare(steps: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, Any]:
    """Max relative logits error over the steps before the first differing argmax."""
    errs: list[float] = []
    for a, b in zip(steps, ref, strict=False):
        if a.shape != b.shape:
            break
        errs.append(((a - b).norm() / b.norm().clamp_min(1e-30)).item())
        if not torch.equal(a.argmax(-1), b.argmax(-1)):
            break
    finite = all(bool(torch.isfinite(s).all()) for s in steps)
    return {"max_rel_err": max(errs) if errs else None, "steps_compared": len(errs), "finite": finite}


def agreement(ids: list[list[int]], ref: list[list[int]]) -> dict[str, Any]:
    prefix = []
    for a, b in zip(ids, ref, strict=True):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefix.append(k)
    return {
        "identical_sequences": sum(a == b for a, b in zip(ids, ref, strict=True)),
        "sequences": len(ids),
        "mean_agreeing_prefix": statistics.fmean(prefix),
        "new_tokens": len(ref[0]),
    }


def time_decode(llm: Any, ids: torch.Tensor, steps: int, device: torch.device) -> float:
    """Seconds per decode step at batch `len(ids)`: prompts in, 3 warm steps, then `steps` timed."""
    engine = llm.engine
    params = SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True)
    rids = [engine.add_request(row.tolist(), params).request_id for row in ids]
    got = dict.fromkeys(rids, 0)
    while min(got.values()) == 0:  # prefill (in as many steps as the budget needs)
        for out in engine.step():
            got[out.request_id] = got.get(out.request_id, 0) + len(out.token_ids)
    for _ in range(3):
        engine.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    for rid in rids:
        with contextlib.suppress(Exception):
            engine.abort(rid)
    return dt


def stacked_expert_info(model: Any) -> dict[str, Any]:
    """Whether `fused_moe`'s stacked weights are views of the per-expert parameters (no memory) or
    copies (bytes listed)."""
    extra, views, blocks = 0, 0, 0
    for block in model.modules():
        if not isinstance(block, JambaSparseMoeBlock):
            continue
        stacked = block.stacked_experts()
        if stacked is None:
            continue
        blocks += 1
        base = block.experts[0].gate_proj.weight.untyped_storage().data_ptr()
        for t in stacked:
            if (
                t.untyped_storage().data_ptr() == base
                or t.data_ptr() == block.experts[0].down_proj.weight.data_ptr()
            ):
                views += 1
            else:
                extra += t.numel() * t.element_size()
    return {"moe_blocks": blocks, "stacks_that_are_views": views, "extra_bytes": extra}


def run_model(name: str, raw: dict[str, Any], args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
              hw: dict[str, Any], fast_backend: str, tmp: Path) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"model": name}
    log(f"{name}: building")
    model, hf, info = build_models(raw, device, dtype, seed=0)
    del hf
    cfg: JambaConfig = model.config
    row["build_info"] = info
    tok = tmp / f"tok-{name}"
    write_tiny_tokenizer(tok, vocab_size=cfg.vocab_size)
    max_batch = max(args.batches)
    tokens = args.prompt_len + args.decode_steps + 16
    llm = make_llm(model, tok, max_batch, max(tokens, args.mixed_max_len + args.mixed_new + 8),
                   max_num_batched_tokens=max(args.mixed_budget, max_batch * args.prompt_len))  # fmt: skip
    row["stacked_experts"] = stacked_expert_info(model)
    # Correctness: a mixed batch, the longest prompt chunked by a smaller budget while others decode.
    gen = torch.Generator().manual_seed(7)
    lens = torch.randint(3, args.mixed_max_len, (args.mixed_batch,), generator=gen).tolist()
    lens[0] = args.mixed_max_len
    batch = [torch.randint(20, cfg.vocab_size, (n,), generator=gen).tolist() for n in lens]
    scheduler = llm.engine.scheduler
    budget = scheduler.config
    scheduler.config = dataclasses.replace(budget, max_num_batched_tokens=args.mixed_budget)
    results: dict[str, Any] = {}
    try:
        for m in MODES:
            with mode(llm, m, fast_backend):
                t = time.perf_counter()
                results[m] = generate_recording(llm, batch, args.mixed_new)
                sync(device)
                log(
                    f"  {name} mixed batch on {m}: {time.perf_counter() - t:.1f}s, {len(results[m][1])} steps"
                )
    finally:
        scheduler.config = budget
    ref_ids, ref_steps, _ = results["reference"]
    row["mixed"] = {"prompt_lens": lens, "budget": args.mixed_budget}
    for m in ("graphs", "fast", "padded"):
        ids, steps, all_fast = results[m]
        row["mixed"][m] = {**compare(steps, ref_steps), **agreement(ids, ref_ids), "all_steps_fast": all_fast}
    fast_ids, fast_steps, _ = results["fast"]
    row["mixed"]["fast_vs_padded"] = {**compare(fast_steps, results["padded"][1]),
                                      **agreement(fast_ids, results["padded"][0])}  # fmt: skip
    row["mixed"]["graphs_vs_fast"] = {**compare(results["graphs"][1], fast_steps),
                                      **agreement(results["graphs"][0], fast_ids)}  # fmt: skip
    graphs = llm.engine.runner.graphs
    row["graphs_captured"] = graphs.captured if graphs is not None else None
    results.clear()
    # Speed.
    acct = accounting(model, cfg)
    row["decode"] = {}
    for b in args.batches:
        ids = prompts(cfg.vocab_size, b, args.prompt_len, seed=100 + b, device=device)
        floor = (
            decode_step_bytes(cfg, acct, b, args.prompt_len + args.decode_steps / 2)
            / hw["copy_bandwidth_bytes_s"]
        )
        entry: dict[str, Any] = {"floor_ms_per_step": 1e3 * floor}
        for m in MODES:
            try:
                with mode(llm, m, fast_backend):
                    entry[f"{m}_ms_per_step"] = 1e3 * time_decode(llm, ids, args.decode_steps, device)
            except Exception as e:  # noqa: BLE001 - a failing path is recorded, the others still run
                entry[f"{m}_error"] = f"{type(e).__name__}: {e}"[:400]
                traceback.print_exc()
        log(
            f"  {name} decode b={b}: "
            + ", ".join(f"{k}={v:.2f}" for k, v in entry.items() if isinstance(v, float))
        )
        row["decode"][f"b{b}"] = entry
    del llm, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8, help="layers of the Mini-shape cut")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--mixed-batch", type=int, default=6)
    p.add_argument("--mixed-max-len", type=int, default=300)
    p.add_argument("--mixed-budget", type=int, default=256)
    p.add_argument("--mixed-new", type=int, default=12)
    p.add_argument(
        "--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1: tiny model, tiny sizes"
    )
    args = p.parse_args(argv)
    args.batches = [int(x) for x in args.batches.split(",")]
    if args.smoke:
        device, dtype, fast_backend = torch.device("cpu"), torch.float32, "triton"
        patch_triton_interpreter()
        args.batches, args.prompt_len, args.decode_steps = [2], 6, 2
        from jamba_runtime.kernels import selective_scan

        selective_scan.SCAN_VARIANT = "sequential"  # the interpreter runs the chunked scan slowly
        args.mixed_batch, args.mixed_max_len, args.mixed_budget, args.mixed_new = 3, 12, 8, 3
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device, dtype, fast_backend = torch.device("cuda"), torch.bfloat16, "auto"
    else:
        print("needs a CUDA device (or --smoke under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    out = out_dir() / "engine_gpu_check.json"
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "args": vars(args),
        "method": __doc__,
        "rows": [],
    }
    report["hardware"] = hw = measure_hardware(device, dtype, quick=True)
    configs = [("tiny", dict(TINY_CONFIG))]
    if not args.smoke:
        configs.append((f"mini-{args.layers}layers", cut_config(MINI_CONFIG, args.layers)))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in configs:
            try:
                report["rows"].append(run_model(name, raw, args, device, dtype, hw, fast_backend, Path(tmp)))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report["rows"].append({"model": name, "error": f"{type(e).__name__}: {e}"[:1000]})
                failed = True
            out.write_text(json.dumps(report, indent=2, default=str))
    for row in report["rows"]:
        if "error" in row:
            print(f"{row['model']}: ERROR {row['error']}")
            continue
        mixed = row["mixed"]
        for m in ("graphs", "fast", "padded"):
            r = mixed[m]
            print(f"{row['model']}: {m} vs reference: max logit rel err {r['max_rel_err']} over {r['steps_compared']} "
                  f"steps, greedy identical {r['identical_sequences']}/{r['sequences']}, "
                  f"mean agreeing prefix {r['mean_agreeing_prefix']:.1f}/{r['new_tokens']}")  # fmt: skip
        failed |= not mixed["fast"]["all_steps_fast"] or not mixed["fast"]["finite"]
        failed |= not mixed["graphs"]["finite"]
        g = mixed["graphs_vs_fast"]
        print(f"{row['model']}: graphs vs fast: max logit rel err {g['max_rel_err']}, greedy identical "
              f"{g['identical_sequences']}/{g['sequences']}; captured {row['graphs_captured']}")  # fmt: skip
        for b, d in row["decode"].items():
            cells = " ".join(f"{k}={v:.2f}" for k, v in d.items() if isinstance(v, float))
            print(f"{row['model']}: decode {b} ms/step: {cells}")
            failed |= "fast_error" in d or "graphs_error" in d
        print(f"{row['model']}: stacked experts {row['stacked_experts']}")
    print(f"wrote {out} in {elapsed():.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
