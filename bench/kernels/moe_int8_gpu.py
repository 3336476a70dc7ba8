"""ExpertsInt8 MoE on CUDA: `fused_moe` (bf16 experts) vs `fused_moe_int8` vs dequantize-all + `fused_moe`.

    python -m bench.kernels.moe_int8_gpu                      # Jamba-1.5-Mini MoE shape, tokens 1 .. 8192
    python -m bench.kernels.moe_int8_gpu --tokens 1,64        # some token counts only
    python -m bench.kernels.moe_int8_gpu --sweep              # also time each GEMM over candidate tiles
    TRITON_INTERPRET=1 python -m bench.kernels.moe_int8_gpu --smoke    # tiny shapes on CPU, end to end

Method (also stored in the JSON):
  shape      hidden 4096, inter 14336, 16 experts, top-2; bf16 activations; random bf16 experts,
             quantized per output channel (`quantize_int8`) for the int8 paths.
  paths      bf16     `fused_moe` on the stacked bf16 weights (torch._grouped_mm);
             int8     `fused_moe_int8` (Triton, int8 tiles dequantized inside the GEMMs);
             deq_all  every expert dequantized to a preallocated bf16 buffer, then `fused_moe`
                      (what running int8 checkpoints costs without a dequant-in-GEMM kernel).
  timing     CUDA events around each call, median of repeats (sized to ~1 s) after a warm-up.
  bytes      weight bytes the path must read: experts that got a token only (bf16 2 B, int8 1 B a
             weight plus the float32 scales); deq_all also reads all int8 and writes all bf16.
             GB/s = bytes / time. floor ms = max(int8 bytes / 2.97e12 B/s, FLOPs / 750e12 FLOP/s),
             both measured on the project's H100 (HBM read, bf16 matmul).
  error      relative Frobenius error of the int8 output vs bf16 (quantization + kernel) and vs
             deq_all (the kernel alone: same int8 weights).
  graph      at tokens 1 and 64: the int8 path captured in a CUDA graph; a replay on new inputs
             must equal an eager call on them bit for bit; its replay time is reported too.
  sweep      (--sweep) each GEMM alone over candidate tiles per block_m; the best per token count.

Results: a markdown table on stdout and `$OUT/moe_int8.json` (OUT unset: bench/results/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch

from bench.common.paths import out_dir
from jamba_runtime.kernels import moe_int8
from jamba_runtime.kernels.backend import patch_triton_interpreter, set_kernel_backend
from jamba_runtime.kernels.moe import fused_moe, route_ref
from jamba_runtime.model.quantization import quantize_int8

HBM_BYTES_PER_S = 2.97e12
BF16_FLOPS = 750e12
MINI = {"hidden": 4096, "inter": 14336, "experts": 16, "top_k": 2, "tokens": [1, 8, 64, 512, 2048, 8192]}
SMOKE = {"hidden": 64, "inter": 96, "experts": 4, "top_k": 2, "tokens": [1, 5, 33]}
GRAPH_TOKENS = (1, 64)
Tile = moe_int8.GemmTile
SWEEP_GATE_UP = [Tile(32, 128, 4, 4), Tile(64, 128, 4, 4), Tile(32, 256, 4, 3), Tile(64, 64, 4, 4),
                 Tile(128, 64, 4, 3), Tile(64, 64, 8, 3), Tile(128, 64, 8, 3)]  # fmt: skip
SWEEP_DOWN = [Tile(16, 256, 4, 4), Tile(32, 256, 4, 4), Tile(32, 128, 4, 4), Tile(64, 128, 4, 4),
              Tile(64, 64, 4, 4), Tile(128, 64, 8, 3), Tile(128, 128, 8, 3)]  # fmt: skip
DEV = "cuda"


def time_ms(fn: Callable[[], object], budget_s: float = 1.0) -> float:
    """Median ms per call, repeats sized to about `budget_s`; on CPU (--smoke) one timed call."""
    if DEV != "cuda":
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    reps = int(min(200, max(5, budget_s * 1e3 / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    if not torch.isfinite(a64).all():
        return float("nan")
    return ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item()


def make_experts(shape: dict) -> dict:
    """Random bf16 experts (made one expert at a time: no float32 copy of all of them) and their
    per-channel int8 quantization."""
    e, h, i = shape["experts"], shape["hidden"], shape["inter"]
    g = torch.Generator(device=DEV).manual_seed(0)
    w = {
        "w13": torch.empty(e, 2 * i, h, dtype=torch.bfloat16, device=DEV),
        "w2": torch.empty(e, h, i, dtype=torch.bfloat16, device=DEV),
        "w13_q": torch.empty(e, 2 * i, h, dtype=torch.int8, device=DEV),
        "w13_scale": torch.empty(e, 2 * i, device=DEV),
        "w2_q": torch.empty(e, h, i, dtype=torch.int8, device=DEV),
        "w2_scale": torch.empty(e, h, device=DEV),
    }
    for x in range(e):
        for name, std in (("w13", h**-0.5), ("w2", i**-0.5)):
            w[name][x] = torch.randn(w[name].shape[1:], generator=g, device=DEV) * std
            w[f"{name}_q"][x], w[f"{name}_scale"][x] = quantize_int8(w[name][x])
    w["router"] = (torch.randn(e, h, generator=g, device=DEV) * h**-0.5).to(torch.bfloat16)
    # deq_all's destination, allocated once (its allocation is not what the path is about).
    w["deq13"], w["deq2"] = torch.empty_like(w["w13"]), torch.empty_like(w["w2"])
    return w


def run_int8(x: torch.Tensor, w: dict, top_k: int) -> torch.Tensor:
    return moe_int8.fused_moe_int8(
        x, w["router"], w["w13_q"], w["w13_scale"], w["w2_q"], w["w2_scale"], top_k
    )


def run_deq_all(x: torch.Tensor, w: dict, top_k: int) -> torch.Tensor:
    # int8 * float32 scale computed in float32 per element, written as bf16 (dequantize_int8's math).
    torch.mul(w["w13_q"], w["w13_scale"][..., None], out=w["deq13"])
    torch.mul(w["w2_q"], w["w2_scale"][..., None], out=w["deq2"])
    return fused_moe(x, w["router"], w["deq13"], w["deq2"], top_k)


def graph_check(x: torch.Tensor, w: dict, top_k: int) -> dict:
    """Capture the int8 path at this batch, replay it on new inputs, compare with eager."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run_int8(x, w, top_k)  # compiles / autotunes nothing inside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run_int8(x, w, top_k)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    equal = torch.equal(static_out, run_int8(x, w, top_k))
    return {"tokens": x.shape[0], "captured": True, "replay_equals_eager": equal,
            "replay_ms": time_ms(graph.replay), "eager_ms": time_ms(lambda: run_int8(x, w, top_k))}  # fmt: skip


def sweep(x: torch.Tensor, w: dict, top_k: int, shape: dict) -> list[dict]:
    """Each GEMM alone over the candidate tiles, for the block_m values that fit this batch."""
    pairs = x.shape[0] * top_k
    per_expert = pairs / min(shape["experts"], pairs)
    block_ms = [bm for bm in (16, 32, 64, 128) if bm <= max(16, 2 * per_expert)][-3:]
    weights, chosen = route_ref(x, w["router"], top_k)
    out = []
    for bm in block_ms:
        sorted_ids, pend = moe_int8.align_pairs(chosen, shape["experts"], bm)
        default = moe_int8.pick_config(pairs, shape["experts"])
        a = moe_int8.gate_up(x, w["w13_q"], w["w13_scale"], sorted_ids, pend, top_k,
                             moe_int8.MoeInt8Config(bm, default.gate_up, default.down))  # fmt: skip
        for gemm, tiles in (("gate_up", SWEEP_GATE_UP), ("down", SWEEP_DOWN)):
            for tile in tiles if DEV == "cuda" else tiles[:1]:
                cfg = moe_int8.MoeInt8Config(bm, tile, tile)
                if gemm == "gate_up":
                    fn = lambda: moe_int8.gate_up(x, w["w13_q"], w["w13_scale"], sorted_ids, pend, top_k, cfg)  # noqa: E731,B023
                else:
                    fn = lambda: moe_int8.down(a, w["w2_q"], w["w2_scale"], sorted_ids, pend,  # noqa: E731,B023
                                               weights.reshape(-1), pairs, cfg)  # fmt: skip
                try:
                    ms = time_ms(fn, budget_s=0.3)
                except Exception as exc:  # noqa: BLE001 - a tile that does not fit is skipped
                    ms, err = float("nan"), f"{type(exc).__name__}: {exc}"[:200]
                else:
                    err = ""
                out.append({"tokens": x.shape[0], "gemm": gemm, "block_m": bm, "block_n": tile.block_n,
                            "block_k": tile.block_k, "num_warps": tile.num_warps, "num_stages": tile.num_stages,
                            "ms": ms, "error": err})  # fmt: skip
    return out


def bench_tokens(tokens: int, w: dict, shape: dict, do_sweep: bool) -> tuple[dict, dict | None, list[dict]]:
    h, i, e, k = shape["hidden"], shape["inter"], shape["experts"], shape["top_k"]
    g = torch.Generator(device=DEV).manual_seed(tokens)
    x = torch.randn(tokens, h, generator=g, device=DEV).to(torch.bfloat16)
    used = int(torch.unique(route_ref(x, w["router"], k)[1]).numel())
    per_expert = 3 * i * h  # weights of one expert
    int8_bytes = used * (per_expert + 4 * (2 * i + h))
    paths = {
        "bf16": (lambda: fused_moe(x, w["router"], w["w13"], w["w2"], k), used * per_expert * 2),
        "int8": (lambda: run_int8(x, w, k), int8_bytes),
        "deq_all": (lambda: run_deq_all(x, w, k), e * per_expert * 3 + used * per_expert * 2),
    }
    row: dict = {"tokens": tokens, "experts_used": used, "int8_weight_bytes": int8_bytes}
    outs = {}
    for name, (fn, nbytes) in paths.items():
        try:
            outs[name] = fn().float()
            row[f"{name}_ms"] = ms = time_ms(fn)
            row[f"{name}_gbps"] = nbytes / ms / 1e6
        except Exception as exc:  # noqa: BLE001 - one failing path must not hide the others
            traceback.print_exc()
            row[f"{name}_ms"] = row[f"{name}_gbps"] = float("nan")
            row.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}"[:300])
    flops = 2 * tokens * k * per_expert
    row["floor_ms"] = 1e3 * max(int8_bytes / HBM_BYTES_PER_S, flops / BF16_FLOPS)
    nan = float("nan")
    row["rel_err_int8_vs_bf16"] = (
        rel_err(outs["int8"], outs["bf16"]) if {"int8", "bf16"} <= outs.keys() else nan
    )
    row["rel_err_int8_vs_deq"] = (
        rel_err(outs["int8"], outs["deq_all"]) if {"int8", "deq_all"} <= outs.keys() else nan
    )
    del outs
    graph = None
    if DEV == "cuda" and tokens in GRAPH_TOKENS:
        try:
            graph = graph_check(x.clone(), w, k)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            graph = {"tokens": tokens, "captured": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    sweeps = sweep(x, w, k, shape) if do_sweep else []
    return row, graph, sweeps


def print_table(rows: list[dict], graphs: list[dict], sweeps: list[dict]) -> None:
    print("\n| tokens | experts used | bf16 ms | int8 ms | deq_all ms | int8 floor ms | bf16 GB/s | int8 GB/s "
          "| int8 / floor | speedup vs bf16 | rel err int8 vs bf16 | vs deq |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokens']} | {r['experts_used']} | {r['bf16_ms']:.4f} | {r['int8_ms']:.4f} | "
              f"{r['deq_all_ms']:.4f} | {r['floor_ms']:.4f} | {r['bf16_gbps']:.0f} | {r['int8_gbps']:.0f} | "
              f"{r['int8_ms'] / r['floor_ms']:.2f}x | {r['bf16_ms'] / r['int8_ms']:.2f}x | "
              f"{r['rel_err_int8_vs_bf16']:.2e} | {r['rel_err_int8_vs_deq']:.2e} |")  # fmt: skip
        for err in r.get("errors", []):
            print(f"    ! {err}")
    for gr in graphs:
        print(f"CUDA graph, tokens {gr['tokens']}: {gr}")
    best: dict[tuple, dict] = {}
    for s in sweeps:
        key = (s["tokens"], s["gemm"])
        if s["ms"] == s["ms"] and (key not in best or s["ms"] < best[key]["ms"]):
            best[key] = s
    for (tokens, gemm), s in sorted(best.items()):
        print(f"sweep best tokens={tokens} {gemm}: block_m {s['block_m']} block_n {s['block_n']} "
              f"block_k {s['block_k']} warps {s['num_warps']} stages {s['num_stages']}: {s['ms']:.4f} ms")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (needs TRITON_INTERPRET=1)")
    ap.add_argument("--tokens", default="", help="comma-separated token counts (default: all)")
    ap.add_argument("--sweep", action="store_true", help="also time each GEMM over candidate tiles")
    args = ap.parse_args()
    global DEV
    shape = dict(SMOKE if args.smoke else MINI)
    if args.tokens:
        shape["tokens"] = [int(t) for t in args.tokens.split(",")]
    if args.smoke:
        DEV = "cpu"
        patch_triton_interpreter()
        set_kernel_backend("triton")  # the interpreter runs the Triton path on CPU tensors
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --smoke under TRITON_INTERPRET=1, or on a GPU")
        return 2
    import triton

    w = make_experts(shape)
    rows, graphs, sweeps = [], [], []
    for tokens in shape["tokens"]:
        print(f"== tokens {tokens}", flush=True)
        row, graph, sw = bench_tokens(tokens, w, shape, args.sweep)
        rows.append(row)
        graphs += [graph] if graph else []
        sweeps += sw
        print(f"   {row}", flush=True)
        if DEV == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke, Triton interpreter)"
    print(f"\n{device}; torch {torch.__version__}, triton {triton.__version__}; shape {shape}")
    print_table(rows, graphs, sweeps)
    out = out_dir() / "moe_int8.json"
    result = {"device": device, "torch": torch.__version__, "triton": triton.__version__, "shape": shape,
              "method": __doc__, "rows": rows, "graph": graphs, "sweep": sweeps}  # fmt: skip
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    bad = [g for g in graphs if not g.get("replay_equals_eager")] + [r for r in rows if r.get("errors")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
