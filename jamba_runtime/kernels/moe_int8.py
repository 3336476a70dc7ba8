"""Top-k mixture of SwiGLU experts with int8 expert weights (ExpertsInt8), dequantized in the GEMMs.

`fused_moe_int8` has `fused_moe`'s contract over the int8 layout of `model/quantization.py`: stacked
`w13_q (experts, 2 * inter, hidden)` int8 (gate rows then up rows) with `w13_scale (experts,
2 * inter)` float32, and `w2_q (experts, hidden, inter)` int8 with `w2_scale (experts, hidden)`.
No full-precision copy of any expert weight is ever made: int8 tiles are loaded and converted to
the activation dtype inside the kernels (exact: |q| <= 127 fits bf16's mantissa), and the
per-output-channel scale multiplies the float32 accumulator.

The Triton path, all on the device and without a host sync (it captures in a CUDA graph):

1. route (`route_ref`: softmax, top-k, not renormalised) -> `(tokens * top_k,)` expert ids;
2. `_align_kernel` (one program): counts per expert, each expert's rows padded to a multiple of
   `block_m`, and `sorted_ids`, the (token, k) pair of each padded row grouped by expert
   (stable order; padding rows hold the sentinel `tokens * top_k`), plus `padded_end`, the
   cumulative end of each expert's padded rows. The grid of the GEMMs is sized from host-known
   shapes only, the bound `tokens * top_k + min(experts, tokens * top_k) * (block_m - 1)` rows;
   a program whose first row is past `padded_end[-1]` returns at once, and an expert without rows
   owns no block, so its weights are never read;
3. `_gate_up_kernel`: for each block of rows (all of one expert) and `block_n` columns, the gate and
   up tiles of the same columns, `silu(gate) * up` in the epilogue -> `a (padded rows, inter)`;
4. `_down_kernel`: `a @ w2^T` scaled, times the routing weight, written to the (token, k) row of a
   float32 `(tokens * top_k, hidden)` buffer; a sum over k (no atomics: deterministic) ends it.

Both GEMMs compute the transposed product `W_tile @ x_tile^T` (swap AB): the dequantized weight is
the MMA's first operand, which Hopper's wgmma takes from registers, so the int8 -> bf16 conversion
needs no trip through shared memory; and the few token rows of a decode step are the MMA's narrow
side (16), the weight rows the wide one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jamba_runtime.kernels.backend import HAS_TRITON, use_triton
from jamba_runtime.kernels.moe import route_ref

_INTERPRET = False
if HAS_TRITON:
    import triton
    import triton.language as tl

    try:
        from triton import knobs

        _INTERPRET = bool(knobs.runtime.interpret)
    except ImportError:  # triton < 3.4 has no knobs: then not the interpreter we patch around
        pass


@dataclass(frozen=True)
class GemmTile:
    """One GEMM's tiling: `block_n` output columns (weight rows) by `block_k` reduced elements."""

    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class MoeInt8Config:
    """Rows per block (all of one expert) and the two GEMMs' tiles; `group_m` blocks of rows share
    a column range before the next (L2 reuse of activations and weights in prefill)."""

    block_m: int
    gate_up: GemmTile
    down: GemmTile
    group_m: int = 8


# Set by tests (small tiles exercise the masks) and by bench/moe_int8_gpu.py --sweep.
CONFIG_OVERRIDE: MoeInt8Config | None = None


def pick_config(pairs: int, experts: int) -> MoeInt8Config:
    """Tiles for `pairs = tokens * top_k` routed rows over `experts` (host-known shapes only).

    Decode (<= 16 rows per used expert on average) takes 16-row blocks, the MMA's minimum, and
    narrow column tiles so that two experts' weights still spread over every SM; prefill takes
    128-row blocks with tiles sized for sm_90 at 8 warps (two 64 x 128 float32 accumulators)."""
    if CONFIG_OVERRIDE is not None:
        return CONFIG_OVERRIDE
    rows = pairs / max(1, min(experts, pairs))  # mean rows per expert that can have any
    # The decode and prefill tiles are the best of `bench/moe_int8_gpu.py --sweep` on an H100 at the
    # Mini shape (1 and 64 tokens; 2048 tokens); the middle class is not swept yet.
    if rows <= 16:
        down_k = 128 if pairs <= 16 else 256
        return MoeInt8Config(16, GemmTile(32, 256, 4, 3), GemmTile(32, down_k, 4, 4))
    if rows <= 128:
        return MoeInt8Config(64, GemmTile(64, 64, 4, 4), GemmTile(64, 64, 4, 4))
    return MoeInt8Config(128, GemmTile(64, 64, 4, 4), GemmTile(128, 128, 8, 3))


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`(out, in)` int8 and `(out,)` scales -> the weight in `dtype` (scaled in float32, then cast)."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def _check_shapes(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13_q: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_q: torch.Tensor,
    w2_scale: torch.Tensor,
) -> tuple[int, int, int]:
    experts, hidden, inter = w2_q.shape[0], x.shape[1], w2_q.shape[2]
    assert w13_q.shape == (experts, 2 * inter, hidden), f"w13_q {tuple(w13_q.shape)}"
    assert w2_q.shape == (experts, hidden, inter), f"w2_q {tuple(w2_q.shape)}"
    assert w13_scale.shape == (experts, 2 * inter), f"w13_scale {tuple(w13_scale.shape)}"
    assert w2_scale.shape == (experts, hidden), f"w2_scale {tuple(w2_scale.shape)}"
    assert router_weight.shape[1] == hidden and router_weight.shape[0] >= experts, (
        f"router_weight {tuple(router_weight.shape)}"
    )
    assert w13_q.dtype == w2_q.dtype == torch.int8, f"int8 weights expected, got {w13_q.dtype}, {w2_q.dtype}"
    return experts, hidden, inter


def fused_moe_int8_ref(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13_q: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_q: torch.Tensor,
    w2_scale: torch.Tensor,
    top_k: int,
    first_expert: int = 0,
) -> torch.Tensor:
    """`fused_moe_int8`'s contract in float32 PyTorch, one expert at a time.

    Routing runs in `x.dtype` (the decisions the Triton path makes); the experts' math in float32
    on weights dequantized one expert at a time, only for experts that got tokens, so at most one
    expert's float32 copy exists at once. Returns `(tokens, hidden)` in `x.dtype`.
    """
    experts, _, inter = _check_shapes(x, router_weight, w13_q, w13_scale, w2_q, w2_scale)
    weights, chosen = route_ref(x, router_weight, top_k)
    xf = x.float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(chosen).tolist():
        i = e - first_expert
        if not 0 <= i < experts:
            continue  # another rank's expert
        token_idx, k_idx = torch.where(chosen == e)
        h = xf[token_idx]
        gate = F.linear(h, dequantize_int8(w13_q[i, :inter], w13_scale[i, :inter], torch.float32))
        up = F.linear(h, dequantize_int8(w13_q[i, inter:], w13_scale[i, inter:], torch.float32))
        y = F.linear(F.silu(gate) * up, dequantize_int8(w2_q[i], w2_scale[i], torch.float32))
        out.index_add_(0, token_idx, y * weights[token_idx, k_idx, None].float())
    return out.to(x.dtype)


def fused_moe_int8(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13_q: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_q: torch.Tensor,
    w2_scale: torch.Tensor,
    top_k: int,
    first_expert: int = 0,
) -> torch.Tensor:
    """Route and run all tokens through their top-k int8 experts, dequantizing inside the GEMMs.

    Args:
        x: `(tokens, hidden)` activations, bfloat16 (float16 / float32 accepted; float32 gets
            exact float32 dots).
        router_weight: `(experts, hidden)`.
        w13_q: `(experts, 2 * inter, hidden)` int8, rows `:inter` the gate projection, `inter:` up;
            w13_scale: `(experts, 2 * inter)` float32, `w13_q[e, o] * w13_scale[e, o]` the row.
        w2_q: `(experts, hidden, inter)` int8 down projection; w2_scale: `(experts, hidden)` float32.
        top_k: experts per token (weights are softmax probabilities, not renormalised).
        first_expert: the router's number of `w13_q[0]` (expert parallel: `router_weight` has all
            experts, the weights only this rank's); pairs routed elsewhere add zero.

    Returns:
        `(tokens, hidden)` in `x.dtype`. CPU or backend `reference`: `fused_moe_int8_ref`.
        Weights must be contiguous in their last dimension (they are never copied).
    """
    experts, hidden, inter = _check_shapes(x, router_weight, w13_q, w13_scale, w2_q, w2_scale)
    if not use_triton(x):
        return fused_moe_int8_ref(x, router_weight, w13_q, w13_scale, w2_q, w2_scale, top_k, first_expert)
    tokens, pairs = x.shape[0], x.shape[0] * top_k
    if tokens == 0:
        return torch.empty_like(x)
    x = x if x.stride(1) == 1 else x.contiguous()
    cfg = pick_config(pairs, experts)
    weights, chosen = route_ref(x, router_weight, top_k)  # (tokens, top_k) each
    partial = experts < router_weight.shape[0]
    if partial:
        # Other ranks' pairs get id -1: the align kernel gives them no row, and their output rows
        # stay the zeros `down` starts from.
        local = chosen - first_expert
        chosen = torch.where((local >= 0) & (local < experts), local, -1)
    sorted_ids, padded_end = align_pairs(chosen, experts, cfg.block_m)
    a = gate_up(x, w13_q, w13_scale, sorted_ids, padded_end, top_k, cfg)
    y = down(a, w2_q, w2_scale, sorted_ids, padded_end, weights.reshape(-1), pairs, cfg, zeroed=partial)
    if top_k == 1:
        return y.to(x.dtype)
    return y.view(tokens, top_k, hidden).sum(1).to(x.dtype)


def padded_rows_bound(pairs: int, experts: int, block_m: int) -> int:
    """Rows of the padded, expert-grouped layout in the worst case, rounded up to whole blocks:
    each expert that has rows (at most `min(experts, pairs)`) adds fewer than `block_m`."""
    bound = pairs + min(experts, pairs) * (block_m - 1)
    return -(-bound // block_m) * block_m


def align_pairs(chosen: torch.Tensor, experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`chosen (tokens, top_k)` expert ids -> `(sorted_ids (padded_rows_bound,) int32, padded_end
    (experts,) int32)`, one program on the device. `sorted_ids[r]` is the flat (token, k) pair
    `token * top_k + k` of padded row `r`, or `tokens * top_k` for a padding row; rows of expert
    `e` are `[padded_end[e - 1], padded_end[e])`, a multiple of `block_m` long; rows past
    `padded_end[-1]` are left unwritten."""
    flat = chosen.reshape(-1)
    pairs = flat.numel()
    sorted_ids = torch.empty(
        padded_rows_bound(pairs, experts, block_m), dtype=torch.int32, device=flat.device
    )
    padded_end = torch.empty(experts, dtype=torch.int32, device=flat.device)
    e_pad = max(2, triton.next_power_of_2(experts))
    _align_kernel[(1,)](
        flat, sorted_ids, padded_end, pairs, experts,
        BLOCK_M=block_m, E_PAD=e_pad, CHUNK=max(16, min(1024, 4096 // e_pad)), num_warps=4,
    )  # fmt: skip
    return sorted_ids, padded_end


def gate_up(
    x: torch.Tensor,
    w13_q: torch.Tensor,
    w13_scale: torch.Tensor,
    sorted_ids: torch.Tensor,
    padded_end: torch.Tensor,
    top_k: int,
    cfg: MoeInt8Config,
) -> torch.Tensor:
    """First GEMM and the activation: `(padded rows, inter)` in `x.dtype`, row `r` holding
    `silu(x_t @ gate^T) * (x_t @ up^T)` for the token of `sorted_ids[r]` (zero for padding rows)."""
    experts, two_inter, hidden = w13_q.shape
    inter = two_inter // 2
    assert w13_q.stride(2) == 1 and w13_scale.stride(1) == 1, "weights must be contiguous in their rows"
    rows = sorted_ids.shape[0]
    a = torch.empty(rows, inter, dtype=x.dtype, device=x.device)
    t = cfg.gate_up
    num_pid_m = rows // cfg.block_m
    grid = (num_pid_m * triton.cdiv(inter, t.block_n),)
    _gate_up_kernel[grid](
        x, w13_q, w13_scale, sorted_ids, padded_end, a,
        x.shape[0] * top_k, top_k, experts, hidden, inter, num_pid_m,
        x.stride(0), w13_q.stride(0), w13_q.stride(1), w13_scale.stride(0), a.stride(0),
        IEEE=x.dtype == torch.float32, EVEN_K=hidden % t.block_k == 0, E_PAD=max(2, triton.next_power_of_2(experts)),
        VIA_F32=_INTERPRET, BLOCK_M=cfg.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, GROUP_M=cfg.group_m,
        num_warps=t.num_warps, num_stages=t.num_stages,
    )  # fmt: skip
    return a


def down(
    a: torch.Tensor,
    w2_q: torch.Tensor,
    w2_scale: torch.Tensor,
    sorted_ids: torch.Tensor,
    padded_end: torch.Tensor,
    topk_weights: torch.Tensor,
    pairs: int,
    cfg: MoeInt8Config,
    zeroed: bool = False,
) -> torch.Tensor:
    """Second GEMM: `(pairs, hidden)` float32, row `token * top_k + k` the expert's output for that
    token times its routing weight `topk_weights (pairs,)`. Every routed row is written exactly
    once; `zeroed` starts from zeros, for pairs routed to no held expert (expert parallel)."""
    experts, hidden, inter = w2_q.shape
    assert w2_q.stride(2) == 1 and w2_scale.stride(1) == 1, "weights must be contiguous in their rows"
    new = torch.zeros if zeroed else torch.empty
    y = new(pairs, hidden, dtype=torch.float32, device=a.device)
    t = cfg.down
    num_pid_m = sorted_ids.shape[0] // cfg.block_m
    grid = (num_pid_m * triton.cdiv(hidden, t.block_n),)
    _down_kernel[grid](
        a, w2_q, w2_scale, sorted_ids, padded_end, topk_weights, y,
        pairs, experts, hidden, inter, num_pid_m,
        a.stride(0), w2_q.stride(0), w2_q.stride(1), w2_scale.stride(0), y.stride(0),
        IEEE=a.dtype == torch.float32, EVEN_K=inter % t.block_k == 0, E_PAD=max(2, triton.next_power_of_2(experts)),
        VIA_F32=_INTERPRET, BLOCK_M=cfg.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, GROUP_M=cfg.group_m,
        num_warps=t.num_warps, num_stages=t.num_stages,
    )  # fmt: skip
    return y


if HAS_TRITON:

    @triton.jit
    def _align_kernel(
        ids_ptr, sorted_ptr, pend_ptr, num_pairs, num_experts,
        BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, CHUNK: tl.constexpr,
    ):  # fmt: skip
        ee = tl.arange(0, E_PAD)
        cc = tl.arange(0, CHUNK)
        counts = tl.zeros((E_PAD,), dtype=tl.int32)
        for c0 in range(0, num_pairs, CHUNK):
            ids = tl.load(ids_ptr + c0 + cc, mask=c0 + cc < num_pairs, other=-1)
            counts += tl.sum((ids[:, None] == ee[None, :]).to(tl.int32), axis=0)
        padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        pend = tl.cumsum(padded, axis=0)  # (E_PAD,) inclusive: end of each expert's padded rows
        tl.store(pend_ptr + ee, pend, mask=ee < num_experts)
        # Padding rows (after each expert's real rows) get the sentinel; disjoint from the real
        # rows written below, so no barrier is needed between the two.
        jj = tl.arange(0, BLOCK_M)
        pad_row = (pend - padded + counts)[:, None] + jj[None, :]  # (E_PAD, BLOCK_M)
        sentinel = tl.full((E_PAD, BLOCK_M), 0, dtype=tl.int32) + num_pairs
        tl.store(sorted_ptr + pad_row, sentinel, mask=pad_row < pend[:, None])
        # Real rows: a pair's row is its expert's start + the pairs of that expert before it.
        nxt = pend - padded  # (E_PAD,) next free row of each expert
        for c0 in range(0, num_pairs, CHUNK):
            i = c0 + cc
            ids = tl.load(ids_ptr + i, mask=i < num_pairs, other=-1)
            onehot = (ids[:, None] == ee[None, :]).to(tl.int32)  # (CHUNK, E_PAD)
            before = tl.cumsum(onehot, axis=0) - onehot  # same-expert pairs earlier in the chunk
            dest = tl.sum(onehot * (nxt[None, :] + before), axis=1)
            tl.store(sorted_ptr + dest, i, mask=(i < num_pairs) & (tl.sum(onehot, axis=1) > 0))
            nxt += tl.sum(onehot, axis=0)

    @triton.jit
    def _to_float(q, dtype: tl.constexpr, VIA_F32: tl.constexpr):
        """int8 tile -> `dtype`, exact. The interpreter (VIA_F32) casts int8 to bfloat16 as raw
        integers into its uint16 storage, so there the value goes through float32; compiled, the
        direct cast keeps Triton's packed int8 -> bf16 conversion."""
        if VIA_F32:
            return q.to(tl.float32).to(dtype)
        else:
            return q.to(dtype)

    @triton.jit
    def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        """Grouped order: GROUP_M row blocks sweep all column tiles before the next group; within
        a group the row blocks (one expert's blocks are adjacent) vary fastest."""
        width = GROUP_M * num_pid_n
        first_m = (pid // width) * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        return first_m + (pid % width) % size_m, (pid % width) // size_m

    @triton.jit
    def _block_expert(pend_ptr, row0, num_experts, E_PAD: tl.constexpr):
        """Expert owning padded row `row0`: how many experts' padded rows end at or before it."""
        ee = tl.arange(0, E_PAD)
        pend = tl.load(pend_ptr + ee, mask=ee < num_experts, other=0x7FFFFFFF)
        return tl.sum((pend <= row0).to(tl.int32), axis=0).to(tl.int64)

    @triton.jit
    def _gate_up_kernel(
        x_ptr, w_ptr, s_ptr, sorted_ptr, pend_ptr, a_ptr,
        num_pairs, top_k, num_experts, hidden, inter, num_pid_m,
        sx_t, sw_e, sw_n, ss_e, sa_m,
        IEEE: tl.constexpr, EVEN_K: tl.constexpr, E_PAD: tl.constexpr, VIA_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_n = _tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(inter, BLOCK_N), GROUP_M)
        row0 = pid_m * BLOCK_M
        if row0 >= tl.load(pend_ptr + num_experts - 1):
            return  # past the real work: the grid is sized for the worst case
        e = _block_expert(pend_ptr, row0, num_experts, E_PAD)
        rows = row0 + tl.arange(0, BLOCK_M)
        pair = tl.load(sorted_ptr + rows)
        row_ok = pair < num_pairs
        tok = tl.where(row_ok, pair // top_k, 0).to(tl.int64)
        nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nw = (nn % inter).to(tl.int64)  # wrapped: loads stay in bounds, the store drops the tail
        kk = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + tok[:, None] * sx_t + kk[None, :]  # (BLOCK_M, BLOCK_K)
        g_ptrs = w_ptr + e * sw_e + nw[:, None] * sw_n + kk[None, :]  # (BLOCK_N, BLOCK_K) int8
        u_ptrs = g_ptrs + inter * sw_n
        acc_g = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            if EVEN_K:
                xt = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
                wg = tl.load(g_ptrs)
                wu = tl.load(u_ptrs)
            else:
                k_ok = kk < hidden - k0
                xt = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                wg = tl.load(g_ptrs, mask=k_ok[None, :], other=0)
                wu = tl.load(u_ptrs, mask=k_ok[None, :], other=0)
            xt = tl.trans(xt)  # (BLOCK_K, BLOCK_M)
            if IEEE:
                acc_g = tl.dot(wg.to(tl.float32), xt, acc_g, input_precision="ieee")
                acc_u = tl.dot(wu.to(tl.float32), xt, acc_u, input_precision="ieee")
            else:
                acc_g = tl.dot(_to_float(wg, xt.dtype, VIA_F32), xt, acc_g)
                acc_u = tl.dot(_to_float(wu, xt.dtype, VIA_F32), xt, acc_u)
            x_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        g = acc_g * tl.load(s_ptr + e * ss_e + nw)[:, None]
        u = acc_u * tl.load(s_ptr + e * ss_e + inter + nw)[:, None]
        act = g * tl.sigmoid(g) * u  # (BLOCK_N, BLOCK_M): silu(gate) * up
        a_ptrs = a_ptr + rows[None, :].to(tl.int64) * sa_m + nn[:, None]
        tl.store(a_ptrs, act.to(a_ptr.dtype.element_ty), mask=(nn < inter)[:, None])

    @triton.jit
    def _down_kernel(
        a_ptr, w_ptr, s_ptr, sorted_ptr, pend_ptr, tw_ptr, y_ptr,
        num_pairs, num_experts, hidden, inter, num_pid_m,
        sa_m, sw_e, sw_n, ss_e, sy_m,
        IEEE: tl.constexpr, EVEN_K: tl.constexpr, E_PAD: tl.constexpr, VIA_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_n = _tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(hidden, BLOCK_N), GROUP_M)
        row0 = pid_m * BLOCK_M
        if row0 >= tl.load(pend_ptr + num_experts - 1):
            return
        e = _block_expert(pend_ptr, row0, num_experts, E_PAD)
        rows = row0 + tl.arange(0, BLOCK_M)
        pair = tl.load(sorted_ptr + rows)
        row_ok = pair < num_pairs
        nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nw = (nn % hidden).to(tl.int64)
        kk = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rows[:, None].to(tl.int64) * sa_m + kk[None, :]  # (BLOCK_M, BLOCK_K)
        w_ptrs = w_ptr + e * sw_e + nw[:, None] * sw_n + kk[None, :]  # (BLOCK_N, BLOCK_K) int8
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            if EVEN_K:
                at = tl.load(a_ptrs)
                w = tl.load(w_ptrs)
            else:
                k_ok = kk < inter - k0
                at = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=k_ok[None, :], other=0)
            at = tl.trans(at)
            if IEEE:
                acc = tl.dot(w.to(tl.float32), at, acc, input_precision="ieee")
            else:
                acc = tl.dot(_to_float(w, at.dtype, VIA_F32), at, acc)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        tw = tl.load(tw_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)
        y = acc * tl.load(s_ptr + e * ss_e + nw)[:, None] * tw[None, :]  # (BLOCK_N, BLOCK_M)
        y_ptrs = y_ptr + pair[None, :].to(tl.int64) * sy_m + nn[:, None]
        tl.store(y_ptrs, y, mask=row_ok[None, :] & (nn < hidden)[:, None])
