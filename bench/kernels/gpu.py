"""Each Triton kernel on CUDA against its PyTorch reference on the same GPU: error, time, floor.

    python -m bench.kernels.gpu                      # all cases, Jamba-1.5-Mini shapes
    python -m bench.kernels.gpu --only scan,attn     # cases whose name contains a word
    python -m bench.kernels.gpu --config path/to/config.json
    TRITON_INTERPRET=1 python -m bench.kernels.gpu --smoke   # tiny shapes on CPU: the script, not the speed

Method (also stored in the JSON):
  correctness  fresh random bf16 inputs; the kernel's output vs the float32 reference computed from
               the same inputs upcast (`<op>_ref`): max abs error and relative Frobenius error
               `|out - ref| / |ref|`, which must stay under 2e-2 (bf16 rounds at ~4e-3 a step);
               outputs must be finite. Before the checked call the caching allocator's free blocks
               are filled with NaN, so an output element never written shows up as NaN.
  timing       CUDA events around each call, median of repeats after a warm-up; several input sets
               in rotation when one set would sit in the 50 MB L2. "ref" is the path `model.py`
               runs today (the `_ref` functions in bf16 plus the cache's gathers) on the same GPU.
  floor        max(bytes that must move / 2.97e12 B/s, tensor-core FLOPs / 750e12 FLOP/s), both
               measured on this H100 (HBM read, bf16 matmul); the scan's float32 arithmetic is
               counted against 60e12 FLOP/s (CUDA-core FMA). "floor %" = floor / Triton time.

A failing case is reported and the others still run; the exit status is 1 when any case is wrong
or raised. Results go to `$OUT/kernels_gpu.json` when OUT is set, else `bench/results/`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.common.paths import out_dir
from bench.kernels import cases as kc
from bench.kernels.cases import Case, attention_cases, mamba_cases, moe_cases

HBM_BYTES_PER_S = 2.97e12
BF16_FLOPS = 750e12
FP32_FLOPS = 60e12
TOL = 2e-2
# Jamba-1.5-Mini (the values of its config.json; --config reads another).
MINI = {
    "hidden_size": 4096,
    "mamba_expand": 2,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_experts": 16,
    "num_experts_per_tok": 2,
    "intermediate_size": 14336,
    "rms_norm_eps": 1e-6,
}
# Batch shapes per case: the serving points (64 decodes; 2K-token prefill chunks; 32K context).
SIZES = {
    "rms_rows": (64, 8192),
    "prefill": (4, 2048),
    "decode": (64, 128),
    "attn_decode": ((64, 2048), (1, 32768)),
    "attn_prefill": ((4096, 0), (2048, 30720)),
    "moe_tokens": (64, 4096),
}
# --smoke: tiny shapes on CPU under TRITON_INTERPRET=1, to exercise this script without a GPU.
SMOKE = {
    "hidden_size": 64, "mamba_expand": 2, "mamba_d_state": 16, "mamba_d_conv": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64,
    "rms_norm_eps": 1e-6, "rms_rows": (3, 17), "prefill": (2, 9), "decode": (3, 5),
    "attn_decode": ((2, 40),), "attn_prefill": ((24, 0), (8, 40)), "moe_tokens": (5,),
}  # fmt: skip


@dataclass
class Row:
    name: str
    shape: str
    ok: bool = False
    max_abs_err: float = math.nan
    rel_err: float = math.nan
    triton_ms: float = math.nan
    ref_ms: float = math.nan
    floor_ms: float = math.nan
    bytes_moved: float = 0.0
    flops: float = 0.0
    error: str = ""
    notes: list[str] = field(default_factory=list)


def time_ms(fn: Callable[[dict], object], sets: list[dict], budget_s: float = 1.5) -> float:
    """Median ms per call over rotating input sets, repeats sized to about `budget_s`."""
    if kc.DEV != "cuda":  # --smoke: exercises the code path; the number means nothing
        t0 = time.perf_counter()
        fn(sets[0])
        return 1e3 * (time.perf_counter() - t0)
    for s in sets[:2]:
        fn(s)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(sets[0])
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    reps = int(min(100, max(3, budget_s * 1e3 / once)))
    times = []
    for i in range(reps):
        start.record()
        fn(sets[i % len(sets)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_case(case: Case) -> Row:
    row = Row(case.name, case.shape, bytes_moved=case.bytes_moved, flops=case.flops + case.fp32_flops)
    row.floor_ms = 1e3 * max(
        case.bytes_moved / HBM_BYTES_PER_S, case.flops / BF16_FLOPS, case.fp32_flops / FP32_FLOPS
    )
    try:
        checks = case.check(case.make(1000))
        row.ok = True
        for what, out, ref in checks:
            out64, ref64 = out.double(), ref.double()
            finite = bool(torch.isfinite(out64).all())
            rel = ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()
            mx = (out64 - ref64).abs().max().item()
            row.max_abs_err = mx if math.isnan(row.max_abs_err) else max(row.max_abs_err, mx)
            row.rel_err = rel if math.isnan(row.rel_err) else max(row.rel_err, rel)
            if not finite or not rel < TOL:
                row.ok = False
                row.notes.append(f"{what}: rel {rel:.2e}{'' if finite else ', non-finite values'}")
        del checks
    except Exception as exc:  # noqa: BLE001 - one broken kernel must not hide the others
        row.ok, row.error = False, f"check: {type(exc).__name__}: {exc}"
        traceback.print_exc()
    try:
        one = case.make(0)
        per_set = sum(t.numel() * t.element_size() for t in one.values() if isinstance(t, torch.Tensor))
        sets = [one] + [case.make(s) for s in range(1, min(8, math.ceil(150e6 / max(per_set, 1))))]
        row.triton_ms = time_ms(case.run, sets)
        row.ref_ms = time_ms(case.ref, sets[:2])
        del sets, one
    except Exception as exc:  # noqa: BLE001
        row.error += f" timing: {type(exc).__name__}: {exc}"
        traceback.print_exc()
    if kc.DEV == "cuda":
        torch.cuda.empty_cache()
    return row


def load_shape(path: str | None, smoke: bool) -> dict:
    cfg = dict(SMOKE) if smoke else {**MINI, **SIZES}
    if path:
        raw = json.loads(Path(path).read_text())
        cfg.update({k: raw[k] for k in MINI if k in raw})
    cfg["d_inner"] = cfg["mamba_expand"] * cfg["hidden_size"]
    cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="a Jamba config.json for the shapes (default: Jamba-1.5-Mini's)")
    ap.add_argument("--only", default="", help="comma-separated words; run cases whose name has one")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (needs TRITON_INTERPRET=1)")
    args = ap.parse_args()
    if args.smoke:
        kc.DEV = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA device: this bench needs one (the CPU paths are the references)")
        return 2
    import triton

    from jamba_runtime.kernels.backend import set_kernel_backend

    if args.smoke:
        from jamba_runtime.kernels.backend import patch_triton_interpreter

        patch_triton_interpreter()
    set_kernel_backend("triton" if args.smoke else "auto")
    # True float32 references: cuDNN's default TF32 convolutions would add ~1e-3 error to them.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    cfg = load_shape(args.config, args.smoke)
    words = [w for w in args.only.split(",") if w]
    rows = []
    for group in (mamba_cases, attention_cases, moe_cases):
        # Built group by group, so the 5.6 GB of expert weights exist only while MoE runs, and a
        # group that cannot even be set up is one failed row, not the end of the run.
        try:
            cases = group(cfg)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            rows.append(Row(group.__name__, "-", error=f"setup: {type(exc).__name__}: {exc}"))
            continue
        for case in cases:
            if words and not any(w in case.name for w in words):
                continue
            print(f"== {case.name} [{case.shape}]", flush=True)
            rows.append(run_case(case))
            r = rows[-1]
            print(
                f"   ok={r.ok} rel={r.rel_err:.2e} triton={r.triton_ms:.4f} ms ref={r.ref_ms:.4f} ms {r.error}"
            )
        del cases
        if kc.DEV == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if kc.DEV == "cuda" else "cpu (smoke, Triton interpreter)"
    print(f"\n{device}; torch {torch.__version__}, triton {triton.__version__}; shapes {cfg}")
    head = f"{'case':<34} {'shape':<34} {'ok':<4} {'rel err':>8} {'triton ms':>10} {'ref ms':>10}"
    print(head + f" {'speedup':>8} {'floor ms':>9} {'floor %':>8}")
    for r in rows:
        speed = r.ref_ms / r.triton_ms if r.triton_ms > 0 else math.nan
        frac = 100 * r.floor_ms / r.triton_ms if r.triton_ms > 0 else math.nan
        print(
            f"{r.name:<34} {r.shape:<34} {'yes' if r.ok else 'NO':<4} {r.rel_err:>8.1e} {r.triton_ms:>10.4f} "
            f"{r.ref_ms:>10.4f} {speed:>7.1f}x {r.floor_ms:>9.4f} {frac:>7.0f}%"
        )
        for note in [*r.notes, *([r.error] if r.error else [])]:
            print(f"    ! {note}")
    out = out_dir() / "kernels_gpu.json"
    result = {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shape_config": cfg,
        "constants": {"hbm_bytes_per_s": HBM_BYTES_PER_S, "bf16_flops": BF16_FLOPS, "fp32_flops": FP32_FLOPS},
        "tolerance_rel": TOL,
        "method": __doc__,
        "rows": [asdict(r) for r in rows],
    }
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    failed = [r.name for r in rows if not r.ok or r.error]
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
