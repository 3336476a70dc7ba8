"""The cases of `bench.kernels.gpu`: for each Triton kernel, how to build its inputs at the
configured shapes, run it, run its reference, and check it against float32 (`Case`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DEV = "cuda"  # "cpu" with `bench.kernels.gpu --smoke`


@dataclass
class Case:
    """`make(seed)` builds one input set; `run(inputs)` is the Triton path, `ref(inputs)` the
    current one; `check(inputs)` returns [(what, out, float32 ref)] from a fresh set."""

    name: str
    shape: str
    make: Callable[[int], dict]
    run: Callable[[dict], object]
    ref: Callable[[dict], object]
    check: Callable[[dict], list[tuple[str, torch.Tensor, torch.Tensor]]]
    bytes_moved: float
    flops: float = 0.0
    fp32_flops: float = 0.0


def rnd(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(*shape, generator=g, device=DEV) * scale).to(dtype)


def poison() -> None:
    if DEV != "cuda":
        return
    torch.cuda.synchronize()
    free = torch.cuda.mem_get_info()[0]
    # Fill (most of) the cached free memory with NaN, then hand it back to the allocator's cache.
    blocks = [torch.empty(1 << 28, dtype=torch.uint8, device=DEV) for _ in range(int(free * 0.3) >> 28)]
    for b in blocks:
        b.view(torch.float32).fill_(math.nan)
    del blocks
    torch.cuda.synchronize()


def mamba_cases(cfg: dict) -> list[Case]:
    """RMSNorm, conv1d and selective scan cases."""
    from jamba_runtime.kernels import causal_conv1d as cv
    from jamba_runtime.kernels import rmsnorm as rn
    from jamba_runtime.kernels import selective_scan as ss

    h, d, n, kw = cfg["hidden_size"], cfg["d_inner"], cfg["mamba_d_state"], cfg["mamba_d_conv"]
    eps = cfg["rms_norm_eps"]
    cases: list[Case] = []

    # RMSNorm + residual add: decode batch and a prefill chunk.
    for rows in cfg["rms_rows"]:

        def make(seed: int, rows: int = rows) -> dict:
            return {
                "x": rnd(rows, h, seed=seed),
                "r": rnd(rows, h, seed=seed + 1),
                "w": rnd(h, seed=seed + 2),
            }

        def check(p: dict) -> list:
            poison()
            out, s = rn.fused_add_rms_norm(p["x"], p["r"], p["w"], eps)
            ref, ref_s = rn.fused_add_rms_norm_ref(p["x"].float(), p["r"].float(), p["w"].float(), eps)
            return [("normed", out, ref), ("sum", s, ref_s)]

        cases.append(Case(
            "rmsnorm_add", f"{rows} x {h}", make, lambda p: rn.fused_add_rms_norm(p["x"], p["r"], p["w"], eps),
            lambda p: rn.fused_add_rms_norm_ref(p["x"], p["r"], p["w"], eps), check, 4 * rows * h * 2,
        ))  # fmt: skip

    # Conv1d prefill: 4 sequences x 2048 packed, x a strided view of the in_proj output.
    seqs, length = cfg["prefill"]
    tokens = seqs * length
    lens = torch.full((seqs,), length, device=DEV)
    cu = torch.arange(0, tokens + 1, length, device=DEV)
    idx = torch.randperm(2 * seqs, device=DEV)[:seqs]

    def conv_make(seed: int) -> dict:
        return {"xz": rnd(tokens, 2 * d, seed=seed), "w": rnd(d, kw, seed=seed + 1, scale=0.5),
                "b": rnd(d, seed=seed + 2), "states": rnd(2 * seqs, d, kw - 1, seed=seed + 3)}  # fmt: skip

    def conv_pad(p: dict) -> torch.Tensor:  # (batch, d_inner, L): what model.py builds today
        return p["xz"][:, :d].view(seqs, length, d).transpose(1, 2)

    def conv_ref(p: dict) -> None:
        out, new = cv.causal_conv1d_ref(conv_pad(p), p["w"], p["b"], p["states"][idx], lens)
        p["states"][idx] = new

    def conv_check(p: dict) -> list:
        ref, ref_state = cv.causal_conv1d_ref(
            conv_pad(p).float(), p["w"].float(), p["b"].float(), p["states"][idx].float(), lens
        )
        poison()
        out = cv.causal_conv1d_varlen(p["xz"][:, :d], p["w"], p["b"], p["states"], cu, idx, None, length)
        return [("out", out, ref.transpose(1, 2).reshape(tokens, d)), ("state", p["states"][idx], ref_state)]

    cases.append(Case(
        "conv1d_varlen", f"{seqs}x{length} tok, d {d}, k {kw}", conv_make,
        lambda p: cv.causal_conv1d_varlen(p["xz"][:, :d], p["w"], p["b"], p["states"], cu, idx, None, length),
        conv_ref, conv_check, 2 * tokens * d * 2,
    ))  # fmt: skip

    # Conv1d decode: 64 sequences in 128 slots.
    batch, slots = cfg["decode"]
    didx = torch.randperm(slots, device=DEV)[:batch]

    def upd_make(seed: int) -> dict:
        return {"xz": rnd(batch, 2 * d, seed=seed), "w": rnd(d, kw, seed=seed + 1, scale=0.5),
                "b": rnd(d, seed=seed + 2), "states": rnd(slots, d, kw - 1, seed=seed + 3)}  # fmt: skip

    def upd_ref(p: dict) -> None:
        ones = torch.ones(batch, dtype=torch.long, device=DEV)
        out, new = cv.causal_conv1d_ref(p["xz"][:, :d, None], p["w"], p["b"], p["states"][didx], ones)
        p["states"][didx] = new

    def upd_check(p: dict) -> list:
        ones = torch.ones(batch, dtype=torch.long, device=DEV)
        x, st = p["xz"][:, :d, None].float(), p["states"][didx].float()
        ref, ref_state = cv.causal_conv1d_ref(x, p["w"].float(), p["b"].float(), st, ones)
        poison()
        out = cv.causal_conv1d_update(p["xz"][:, :d], p["w"], p["b"], p["states"], didx)
        return [("out", out, ref[:, :, 0]), ("state", p["states"][didx], ref_state)]

    cases.append(Case(
        "conv1d_update", f"batch {batch}, d {d}, k {kw}", upd_make,
        lambda p: cv.causal_conv1d_update(p["xz"][:, :d], p["w"], p["b"], p["states"], didx),
        upd_ref, upd_check, batch * d * 2 * 2 + 2 * batch * d * (kw - 1) * 2,
    ))  # fmt: skip

    # Selective scan prefill (same packing) and the decode state update.
    def scan_make(seed: int, t: int = tokens, nslots: int = 2 * seqs) -> dict:
        return {"x": rnd(t, d, seed=seed), "dt": rnd(t, d, seed=seed + 1, scale=0.5),
                "z": rnd(t, 2 * d, seed=seed + 2)[:, d:],
                "A": -torch.exp(rnd(d, n, seed=seed + 3, scale=0.5, dtype=torch.float32)),
                "B": rnd(t, n, seed=seed + 4), "C": rnd(t, n, seed=seed + 5),
                "D": rnd(d, seed=seed + 6, dtype=torch.float32), "dt_bias": rnd(d, seed=seed + 7, scale=0.5) - 1,
                "states": rnd(nslots, d, n, seed=seed + 8, dtype=torch.float32)}  # fmt: skip

    def padded(p: dict, b: int, L: int, f: Callable = lambda t: t) -> dict:
        ch = {k: f(p[k]).reshape(b, L, d).transpose(1, 2) for k in ("x", "dt", "z")}
        return {**ch, "B": f(p["B"]).view(b, L, n), "C": f(p["C"]).view(b, L, n), "A": p["A"], "D": p["D"],
                "dt_bias": f(p["dt_bias"])}  # fmt: skip

    def scan_args(p: dict) -> dict:
        return {k: p[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")}

    mask = torch.ones(seqs, length, dtype=torch.bool, device=DEV)

    def scan_ref(p: dict) -> None:
        y, new = ss.selective_scan_ref(**padded(p, seqs, length), ssm_state=p["states"][idx], mask=mask)
        p["states"][idx] = new

    def scan_check(p: dict) -> list:
        ref, ref_state = ss.selective_scan_ref(
            **padded(p, seqs, length, lambda t: t.float()), ssm_state=p["states"][idx], mask=mask
        )
        poison()
        y = ss.selective_scan_varlen(**scan_args(p), ssm_states=p["states"], cu_seqlens=cu, state_indices=idx)
        return [("y", y, ref.transpose(1, 2).reshape(tokens, d)), ("state", p["states"][idx], ref_state)]

    def scan_run(p: dict) -> torch.Tensor:
        return ss.selective_scan_varlen(
            **scan_args(p), ssm_states=p["states"], cu_seqlens=cu, state_indices=idx
        )

    for variant in ("chunked", "sequential"):  # both prefill kernels, until this picks one

        def pinned(fn: Callable, variant: str = variant) -> Callable:
            def call(p: dict) -> object:
                saved, ss.SCAN_VARIANT = ss.SCAN_VARIANT, variant
                try:
                    return fn(p)
                finally:
                    ss.SCAN_VARIANT = saved

            return call

        cases.append(Case(
            f"selective_scan_varlen/{variant}", f"{seqs}x{length} tok, d {d}, n {n}", scan_make,
            pinned(scan_run), scan_ref, pinned(scan_check), 4 * tokens * d * 2 + 2 * tokens * n * 2,
            fp32_flops=10 * tokens * d * n,
        ))  # fmt: skip

    one = torch.ones(batch, 1, dtype=torch.bool, device=DEV)

    def step_ref(p: dict) -> None:
        step = {k: (v[:, :, None] if k in ("x", "dt", "z") else v[:, None] if k in ("B", "C") else v)
                for k, v in scan_args(p).items()}  # fmt: skip
        y, new = ss.selective_scan_ref(**step, ssm_state=p["states"][didx], mask=one)
        p["states"][didx] = new

    def step_check(p: dict) -> list:
        f32 = {k: v.float() for k, v in scan_args(p).items()}
        step = {k: (v[:, :, None] if k in ("x", "dt", "z") else v[:, None] if k in ("B", "C") else v)
                for k, v in f32.items()}  # fmt: skip
        ref, ref_state = ss.selective_scan_ref(**step, ssm_state=p["states"][didx], mask=one)
        poison()
        y = ss.selective_state_update(p["states"], **scan_args(p), state_indices=didx)
        return [("y", y, ref[:, :, 0]), ("state", p["states"][didx], ref_state)]

    cases.append(Case(
        "selective_state_update", f"batch {batch}, d {d}, n {n}", lambda s: scan_make(s, batch, slots),
        lambda p: ss.selective_state_update(p["states"], **scan_args(p), state_indices=didx),
        step_ref, step_check, 2 * batch * d * n * 4 + 4 * batch * d * 2,
    ))  # fmt: skip

    return cases


def _pool(seq_totals: list[int], kvh: int, hd: int, bs: int, seed: int) -> dict:
    """A shuffled paged KV pool holding each sequence's keys, and the block tables."""
    nblk = sum(-(-t // bs) for t in seq_totals)
    perm = torch.randperm(nblk, device=DEV, generator=torch.Generator(device=DEV).manual_seed(seed))
    width = max(-(-t // bs) for t in seq_totals)
    tables = torch.zeros(len(seq_totals), width, dtype=torch.long, device=DEV)
    used = 0
    for i, t in enumerate(seq_totals):
        tables[i, : -(-t // bs)] = perm[used : used + -(-t // bs)]
        used += -(-t // bs)
    return {
        "k": rnd(nblk * bs, kvh, hd, seed=seed),
        "v": rnd(nblk * bs, kvh, hd, seed=seed + 1),
        "tables": tables,
    }


def _gather(buf: torch.Tensor, tables: torch.Tensor, length: int, bs: int) -> torch.Tensor:
    """What `PagedHybridCache._gather` does today: `(batch, kv_heads, length, head_dim)`."""
    offs = torch.arange(bs, device=buf.device)
    idx = (tables[:, : -(-length // bs), None] * bs + offs).reshape(tables.shape[0], -1)[:, :length]
    return buf[idx].transpose(1, 2)


def attention_cases(cfg: dict) -> list[Case]:
    from jamba_runtime.kernels import attention as at

    qh, kvh, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    bs, scale, cases = 16, hd**-0.5, []
    for batch, ctx in cfg["attn_decode"]:
        lens = torch.full((batch,), ctx, device=DEV)

        def make(seed: int, batch: int = batch, ctx: int = ctx) -> dict:
            return {**_pool([ctx] * batch, kvh, hd, bs, seed), "q": rnd(batch, qh, hd, seed=seed + 5)}

        def run(p: dict, ctx: int = ctx, lens: torch.Tensor = lens) -> torch.Tensor:
            return at.paged_attention_decode(p["q"], p["k"], p["v"], p["tables"], lens, bs, scale, ctx)

        def ref(p: dict, ctx: int = ctx, lens: torch.Tensor = lens) -> torch.Tensor:
            k, v = _gather(p["k"], p["tables"], ctx, bs), _gather(p["v"], p["tables"], ctx, bs)
            return at.attention_ref(p["q"][:, :, None], k, v, lens - 1, scale)

        def check(p: dict, run: Callable = run, lens: torch.Tensor = lens, batch: int = batch) -> list:
            cu = torch.arange(batch + 1, device=DEV)
            r = at.paged_attention_ref(p["q"].float(), p["k"], p["v"], p["tables"], cu, lens - 1, bs, scale)
            poison()
            return [("out", run(p), r)]

        cases.append(Case("paged_attn_decode", f"batch {batch} x ctx {ctx}, bs {bs}", make, run, ref, check,
                          2 * batch * ctx * kvh * hd * 2, flops=4 * batch * ctx * qh * hd))  # fmt: skip
    for q_len, ctx in cfg["attn_prefill"]:
        total = ctx + q_len
        cu = torch.tensor([0, q_len], device=DEV)
        ctx_t = torch.tensor([ctx], device=DEV)

        def make(seed: int, q_len: int = q_len, total: int = total) -> dict:
            return {**_pool([total], kvh, hd, bs, seed), "q": rnd(q_len, qh, hd, seed=seed + 5)}

        def run(
            p: dict, q_len: int = q_len, cu: torch.Tensor = cu, ctx_t: torch.Tensor = ctx_t
        ) -> torch.Tensor:
            return at.paged_attention_prefill(
                p["q"], p["k"], p["v"], p["tables"], cu, ctx_t, bs, scale, q_len
            )

        def ref(p: dict, total: int = total, ctx_t: torch.Tensor = ctx_t) -> torch.Tensor:
            k, v = _gather(p["k"], p["tables"], total, bs), _gather(p["v"], p["tables"], total, bs)
            return at.attention_ref(p["q"].transpose(0, 1)[None], k, v, ctx_t, scale)

        def check(p: dict, run: Callable = run, cu: torch.Tensor = cu, ctx_t: torch.Tensor = ctx_t) -> list:
            r = at.paged_attention_ref(p["q"].float(), p["k"], p["v"], p["tables"], cu, ctx_t, bs, scale)
            poison()
            return [("out", run(p), r)]

        pairs = q_len * ctx + q_len * (q_len + 1) // 2  # causal (query, key) pairs
        cases.append(Case("paged_attn_prefill", f"{q_len} new after {ctx}, bs {bs}", make, run, ref, check,
                          2 * total * kvh * hd * 2 + 2 * q_len * qh * hd * 2, flops=4 * pairs * qh * hd))  # fmt: skip
    return cases


def moe_cases(cfg: dict) -> list[Case]:
    from jamba_runtime.kernels import moe as mo

    h, inter, e, k = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_experts"],
        cfg["num_experts_per_tok"],
    )
    # One set of expert weights (5.6 GB in bf16 at the Mini shape) shared by every input set.
    w13, w2 = rnd(e, 2 * inter, h, seed=7, scale=0.02), rnd(e, h, inter, seed=8, scale=0.02)
    router = rnd(e, h, seed=9, scale=0.05)
    gates, ups, downs = list(w13[:, :inter]), list(w13[:, inter:]), list(w2)
    cases = []
    for tokens in cfg["moe_tokens"]:

        def make(seed: int, tokens: int = tokens) -> dict:
            return {"x": rnd(tokens, h, seed=seed)}

        def check(p: dict) -> list:
            x = p["x"]
            # Float32 experts on the bf16 routing: a near-tie routed differently in float32 would
            # be a different function, not an error.
            weights, chosen = mo.route_ref(x, router, k)
            ref = torch.zeros(x.shape, dtype=torch.float32, device=DEV)
            for ex in range(e):
                tok, slot = torch.where(chosen == ex)
                if len(tok):
                    xs = x[tok].float()
                    y = (
                        torch.nn.functional.silu(xs @ gates[ex].float().T) * (xs @ ups[ex].float().T)
                    ) @ downs[ex].float().T
                    ref.index_add_(0, tok, y * weights[tok, slot, None].float())
            poison()
            return [("out", mo.fused_moe(x, router, w13, w2, k), ref)]

        cases.append(Case(
            "moe_grouped_mm", f"{tokens} tok, {e} experts top-{k}, {h}->{inter}", make,
            lambda p: mo.fused_moe(p["x"], router, w13, w2, k),
            lambda p: mo.moe_ref(p["x"], router, gates, ups, downs, k), check,
            3 * e * h * inter * 2 + 2 * tokens * h * 2, flops=2 * tokens * k * 3 * h * inter,
        ))  # fmt: skip
    return cases
