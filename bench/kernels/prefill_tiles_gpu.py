"""Tile sweeps of the two prefill kernels that long prompts spend their time in, at the Mini shape.

    python -m bench.kernels.prefill_tiles_gpu               # H100: attention + scan, about 2 minutes
    python -m bench.kernels.prefill_tiles_gpu --only scan   # the scan variants alone

Attention: `paged_attention_prefill` for one 8192-token chunk after a cached prefix of 0, 24K and
120K tokens (32 query heads over 8 KV heads, head_dim 128, blocks of 16, bf16), for each
`FLASH_TILES` candidate, beside PyTorch's SDPA on the same keys gathered out of the blocks
(`causal_lower_right`, GQA): causal TFLOP/s (4 * heads * head_dim * visible keys summed over the
queries) and relative error against the default tiles. Scan: `selective_scan_varlen` on d_inner
8192 x d_state 16 for 1 x 8192, 4 x 2048 and 16 x 512 tokens, for each variant and tile candidate
(`SCAN_CANDIDATES`), with the relative error of y and the states against the float32 reference
and the floor (bytes / 2.97 TB/s).
Table printed, JSON to `$OUT/prefill_kernels_gpu.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F

from bench.common.paths import out_dir
from jamba_runtime.kernels import attention as attn
from jamba_runtime.kernels import selective_scan as scan
from jamba_runtime.kernels.backend import kernel_backend

FLASH = [None, (64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3), (128, 64, 8, 3),
         (128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 8, 2)]  # fmt: skip
# Scan: the chunked kernel at its default tiles and its best earlier candidate (BLOCK_D, BLOCK_T,
# warps), and the sequential one at (warps, segment length (0: from the GPU), channels per thread).
SCAN_CANDIDATES: list[tuple[str, tuple[int, int, int] | None]] = [
    ("chunked", None), ("sequential", None), ("sequential", (4, 128, 1)), ("sequential", (4, 512, 1)),
    ("sequential", (2, 0, 1)), ("sequential", (4, 0, 2)),
]  # fmt: skip
DEFAULT_SCAN = (scan.SCAN_VARIANT, scan.SCAN_TILES, scan.SEQ_TILES)


def timed(fn: Any, reps: int = 5) -> float:
    """Median milliseconds of `fn()` (CUDA events), after one warm call."""
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def attention_rows() -> list[dict[str, Any]]:
    dev, dt = torch.device("cuda"), torch.bfloat16
    heads, kvh, hd, bs, q_len = 32, 8, 128, 16, 8192
    rows = []
    for ctx in (0, 24576, 122880):
        total = ctx + q_len
        nblk = -(-total // bs)
        g = torch.Generator(device=dev).manual_seed(ctx)
        perm = torch.randperm(nblk + 8, generator=g, device=dev)[:nblk]  # scattered blocks
        k_cache = torch.randn((nblk + 8) * bs, kvh, hd, generator=g, device=dev, dtype=dt)
        v_cache = torch.randn_like(k_cache)
        tables = perm[None, :]
        q = torch.randn(q_len, heads, hd, generator=g, device=dev, dtype=dt)
        cu = torch.tensor([0, q_len], device=dev)
        ctx_t = torch.tensor([ctx], device=dev)
        visible = q_len * ctx + q_len * (q_len + 1) / 2
        flops = 4 * heads * hd * visible
        base = None
        for tiles in FLASH:
            attn.FLASH_TILES = tiles
            row: dict[str, Any] = {"op": "attention", "ctx": ctx, "q_len": q_len, "tiles": tiles}
            try:
                run = lambda: attn.paged_attention_prefill(  # noqa: E731
                    q, k_cache, v_cache, tables, cu, ctx_t, bs, hd**-0.5, q_len
                )
                out = run()
                if base is None:
                    base = out
                row["ms"] = timed(run)
                row["tflops"] = flops / row["ms"] / 1e9
                row["rel_err_vs_default"] = rel(out, base)
                row["finite"] = bool(torch.isfinite(out).all())
            except Exception as e:  # noqa: BLE001 - a config that fails to compile is a result
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            print(row, flush=True)
        attn.FLASH_TILES = None
        # SDPA on keys gathered out of the blocks (the gather is part of its cost).
        from torch.nn.attention.bias import causal_lower_right

        def sdpa() -> torch.Tensor:
            idx = (tables[0, :, None] * bs + torch.arange(bs, device=dev)).reshape(-1)[:total]
            k = k_cache[idx].transpose(0, 1)[None]  # (1, kvh, total, hd)
            v = v_cache[idx].transpose(0, 1)[None]
            mask = causal_lower_right(q_len, total)
            o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k, v, attn_mask=mask, enable_gqa=True)
            return o[0].transpose(0, 1)

        row = {"op": "attention", "ctx": ctx, "q_len": q_len, "tiles": "sdpa"}
        try:
            out = sdpa()
            row["ms"] = timed(sdpa)
            row["tflops"] = flops / row["ms"] / 1e9
            row["rel_err_vs_default"] = rel(out, base)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        rows.append(row)
        print(row, flush=True)
        torch.cuda.empty_cache()
    return rows


def scan_rows() -> list[dict[str, Any]]:
    """Each scan variant and tile candidate on three packings of prefill tokens (one 8K chunk of a
    long prompt; 4 x 2K; 16 x 512), with the relative error against the float32 reference."""
    dev = torch.device("cuda")
    d, n = 8192, 16
    rows: list[dict[str, Any]] = []
    for seqs, length in ((1, 8192), (4, 2048), (16, 512)):
        tokens = seqs * length
        g = torch.Generator(device=dev).manual_seed(seqs)
        x = torch.randn(tokens, d, generator=g, device=dev, dtype=torch.bfloat16)
        dt = torch.randn(tokens, d, generator=g, device=dev, dtype=torch.bfloat16) * 0.5 - 2
        z = torch.randn(tokens, d, generator=g, device=dev, dtype=torch.bfloat16)
        b = torch.randn(tokens, n, generator=g, device=dev, dtype=torch.bfloat16)
        c = torch.randn(tokens, n, generator=g, device=dev, dtype=torch.bfloat16)
        a = (
            -torch.rand(d, n, generator=g, device=dev).mul(15).add(1)
        )  # -exp(A_log) of a trained model: -1 .. -16
        dd = torch.ones(d, device=dev)
        bias = torch.zeros(d, device=dev, dtype=torch.bfloat16)
        states0 = torch.randn(2 * seqs, d, n, generator=g, device=dev) * 0.1
        cu = torch.arange(0, tokens + 1, length, device=dev)
        slots = torch.arange(1, 2 * seqs, 2, device=dev, dtype=torch.int32)
        init = torch.ones(seqs, dtype=torch.bool, device=dev)
        ref_states = states0.clone()
        with kernel_backend("reference"):
            ref = scan.selective_scan_varlen(
                x.float(), dt.float(), a, b.float(), c.float(), dd, z.float(), bias.float(), ref_states, cu,
                slots, init,
            )  # fmt: skip
        for variant, tiles in SCAN_CANDIDATES:
            scan.SCAN_VARIANT = variant
            scan.SCAN_TILES, scan.SEQ_TILES = (tiles, None) if variant == "chunked" else (None, tiles)
            row: dict[str, Any] = {
                "op": "scan",
                "variant": variant,
                "tiles": tiles,
                "ctx": f"{seqs}x{length}",
            }
            states = states0.clone()

            def run(states: torch.Tensor = states, length: int = length) -> torch.Tensor:
                return scan.selective_scan_varlen(
                    x, dt, a, b, c, dd, z, bias, states, cu, slots, init, length
                )

            try:
                out = run()
                row["rel_err_vs_fp32"] = rel(out, ref)
                row["state_rel_err_vs_fp32"] = rel(states[slots.long()], ref_states[slots.long()])
                row["finite"] = bool(torch.isfinite(out).all())
                row["ms"] = timed(run, reps=10)
                # bytes: x, dt, z read and y written (bf16), B and C (bf16), the state read and written
                row["floor_ms"] = (4 * tokens * d * 2 + 2 * tokens * n * 2 + 2 * seqs * d * n * 4) / 2.97e9
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            print(row, flush=True)
        torch.cuda.empty_cache()
    scan.SCAN_VARIANT, scan.SCAN_TILES, scan.SEQ_TILES = DEFAULT_SCAN
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--only", choices=("attention", "scan"), help="one kernel's sweep (default: both)")
    args = ap.parse_args()
    rows = (attention_rows() if args.only != "scan" else []) + (
        scan_rows() if args.only != "attention" else []
    )
    print(
        "\n| op | setting | ctx | ms | TFLOP/s or floor ms | rel err (attention: vs default; scan: vs float32) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        setting = r.get("variant", "") + " " + str(r["tiles"])
        speed = f"{r['tflops']:.0f}" if "tflops" in r else f"{r['floor_ms']:.3f}" if "floor_ms" in r else "-"
        err = r.get("rel_err_vs_default", r.get("rel_err_vs_fp32", float("nan")))
        cells = [r["op"], setting, r.get("ctx", "-"), f"{r['ms']:.3f}" if "ms" in r else r.get("error", "?")[:60],
                 speed, f"{err:.1e}"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    (out_dir() / "prefill_kernels_gpu.json").write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
