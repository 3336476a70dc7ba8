"""Causal grouped-query attention of new queries over each sequence's cached + new keys.

Entry points:

- `attention` has `attention_ref`'s padded contract (the model's reference path calls it, on keys the cache
  has gathered into a rectangle);
- `paged_attention_prefill`: packed queries (`cu_seqlens`) over keys read in place from the paged
  KV cache through block tables, a cached prefix before each sequence's new tokens;
- `paged_attention_decode`: one query per sequence over its blocks, all query heads of a KV head in
  one program (K and V read once per KV head), the keys split across programs for long contexts.

No positional encoding anywhere (Jamba): position enters only through the causal mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from jamba_runtime.kernels.backend import HAS_TRITON, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context_lens: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attend each new query to the keys at or before its position.

    Args:
        q: `(batch, heads, max_query_len, head_dim)` new queries, right-padded.
        k, v: `(batch, kv_heads, max_total_len, head_dim)` all keys so far (cached then new).
        context_lens: `(batch,)` cached tokens per sequence before the new ones.
        scale: softmax scale, `head_dim ** -0.5`.

    Returns:
        `(batch, heads, max_query_len, head_dim)`; rows of padded queries hold garbage.
    """
    lq, lk = q.shape[2], k.shape[2]
    # No positional encoding (Jamba): position matters only through this causal mask.
    qpos = context_lens.to(q.device)[:, None] + torch.arange(lq, device=q.device)[None, :]  # (batch, lq)
    mask = torch.arange(lk, device=q.device)[None, None, :] <= qpos[:, :, None]  # (batch, lq, lk)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[:, None], scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Packed queries over the paged cache, in float32, one sequence at a time.

    Args:
        q: `(num_tokens, heads, head_dim)`; k_cache, v_cache: `(num_blocks * block_size, kv_heads,
            head_dim)` holding every sequence's keys, the new tokens' included.
        block_tables: `(batch, max_blocks)`; cu_seqlens: `(batch + 1,)`; context_lens: `(batch,)`.

    Returns:
        `(num_tokens, heads, head_dim)` in `q.dtype`.
    """
    out = torch.empty_like(q)
    offs = torch.arange(block_size, device=q.device)
    for b in range(block_tables.shape[0]):
        s, e, ctx = int(cu_seqlens[b]), int(cu_seqlens[b + 1]), int(context_lens[b])
        total = ctx + e - s
        idx = (block_tables[b, : -(-total // block_size), None] * block_size + offs).reshape(-1)[:total]
        k = k_cache[idx].float().transpose(0, 1)[None]  # (1, kv_heads, total, head_dim)
        v = v_cache[idx].float().transpose(0, 1)[None]
        qb = q[s:e].float().transpose(0, 1)[None]  # (1, heads, q_len, head_dim)
        o = attention_ref(qb, k, v, torch.tensor([ctx], device=q.device), scale)
        out[s:e] = o[0].transpose(0, 1).to(q.dtype)
    return out


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context_lens: torch.Tensor, scale: float
) -> torch.Tensor:
    """`attention_ref`'s contract (same shapes); Triton on CUDA (see `backend.py`). Padded query
    rows are computed like real ones (finite), never left unset."""
    if not use_triton(q):
        return attention_ref(q, k, v, context_lens, scale)
    batch, heads, lq, hd = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    out = torch.empty(batch, heads, lq, hd, dtype=q.dtype, device=q.device)
    dev = q.device
    zeros = torch.zeros(batch, dtype=torch.int32, device=dev)
    _launch_flash(
        (q, q.stride(0), q.stride(2), q.stride(1)), (k, k.stride(0), k.stride(2), k.stride(1)),
        (v, v.stride(0), v.stride(2), v.stride(1)), (out, out.stride(0), out.stride(2), out.stride(1)),
        zeros, torch.full((batch,), lq, dtype=torch.int32, device=dev), context_lens.to(torch.int32),
        torch.full((batch,), lk, dtype=torch.int32, device=dev), None, 0, heads, kv_heads, hd, lq, scale,
    )  # fmt: skip
    return out


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    max_query_len: int,
    host_lens: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """Packed queries (a prefill chunk per sequence, after a cached prefix) over the paged cache.

    Args:
        q: `(num_tokens, heads, head_dim)`.
        k_cache, v_cache: `(num_blocks * block_size, kv_heads, head_dim)`, this step's keys and
            values already stored at `slot_mapping` (as `PagedHybridCache.update_kv` does).
        block_tables: `(batch, max_blocks)` int; cu_seqlens: `(batch + 1,)` query offsets;
        context_lens: `(batch,)` cached tokens before each sequence's queries.
        max_query_len: the longest query run (a host int: the grid is sized from it).
        host_lens: `(query_lens, context_lens)` as host ints, when the caller has them: on CUDA
            in bf16/fp16, sequences with at least `SDPA_MIN_QUERY` new tokens then go to
            PyTorch's SDPA (flash) over their keys gathered out of the blocks, which measured
            faster than this kernel for long chunks (`bench/kernels/prefill_tiles_gpu.py`).

    Returns:
        `(num_tokens, heads, head_dim)` in `q.dtype`.
    """
    if not use_triton(q):
        return paged_attention_ref(
            q, k_cache, v_cache, block_tables, cu_seqlens, context_lens, block_size, scale
        )
    _, heads, hd = q.shape
    kv_heads = k_cache.shape[1]
    out = torch.empty_like(q)  # (num_tokens, heads, head_dim)
    q_lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    ctx = context_lens.to(torch.int32)
    long = _sdpa_sequences(q, host_lens)
    if long:
        assert host_lens is not None
        short_lens = [0 if i in long else n for i, n in enumerate(host_lens[0])]
        for i in long:
            _sdpa_prefill(q, k_cache, v_cache, block_tables, host_lens, i, block_size, scale, out)
        if not any(short_lens):
            return out
        # The kernel skips the long sequences' programs (zero queries); their rows are written.
        q_lens = torch.tensor(short_lens, dtype=torch.int32, device=q.device)
        max_query_len = max(short_lens)
    _launch_flash(
        (q, 0, q.stride(0), q.stride(1)), (k_cache, 0, k_cache.stride(0), k_cache.stride(1)),
        (v_cache, 0, v_cache.stride(0), v_cache.stride(1)), (out, 0, out.stride(0), out.stride(1)),
        cu_seqlens[:-1].to(torch.int32), q_lens, ctx, ctx + q_lens, block_tables, block_size,
        heads, kv_heads, hd, max_query_len, scale,
    )  # fmt: skip
    return out


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    """One query per sequence (its newest token) over all of its keys in the paged cache.

    Args:
        q: `(batch, heads, head_dim)`.
        k_cache, v_cache: `(num_blocks * block_size, kv_heads, head_dim)`, the new token's key
            and value already stored.
        block_tables: `(batch, max_blocks)` int; seq_lens: `(batch,)` keys per sequence (cached + 1).
        max_seq_len: an upper bound on `seq_lens` (a host int: caps the split over keys). Each
            sequence divides its own keys among the splits inside the kernel, so one launch (a
            captured CUDA graph) serves every length up to `max_seq_len`.

    Returns:
        `(batch, heads, head_dim)` in `q.dtype`.
    """
    batch, heads, hd = q.shape
    if not use_triton(q):
        cu = torch.arange(batch + 1, device=q.device)
        return paged_attention_ref(q, k_cache, v_cache, block_tables, cu, seq_lens - 1, block_size, scale)
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    assert group * kv_heads == heads, f"{heads} query heads over {kv_heads} KV heads"
    # No spills on sm_90: bf16 at 32 keys a tile (64 spilled), exact float32 dots at 16.
    block_n = 16 if q.dtype == torch.float32 else 32
    # Split the keys so that batch * kv_heads * splits fills the GPU (about two programs per SM
    # on an H100), but never below one key tile per split.
    want = max(1, -(-264 // (batch * kv_heads)))
    splits = max(1, min(want, -(-max_seq_len // block_n), 64))
    o_part = torch.empty(batch, heads, splits, hd, dtype=torch.float32, device=q.device)
    lse = torch.empty(batch, heads, splits, dtype=torch.float32, device=q.device)
    _decode_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, seq_lens.to(torch.int32), o_part, lse,
        scale * _LOG2E, hd, splits, block_size, group, *q.stride(), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), block_tables.stride(0), *o_part.stride(), *lse.stride(),
        IEEE=q.dtype == torch.float32, GROUP_PAD=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=triton.next_power_of_2(hd), num_warps=4,
    )  # fmt: skip
    out = torch.empty_like(q)  # (batch, heads, head_dim)
    _combine_kernel[(batch * heads,)](
        o_part, lse, out, heads, hd, splits, *o_part.stride(), *lse.stride(), *out.stride(),
        SPLITS=triton.next_power_of_2(splits), BLOCK_D=triton.next_power_of_2(hd),
    )  # fmt: skip
    return out


SDPA_MIN_QUERY = 1024
"""New tokens of one sequence from which a prefill chunk goes to PyTorch's SDPA (see
`paged_attention_prefill`); shorter ones stay in the Triton kernel, batched in one launch."""


def _sdpa_sequences(q: torch.Tensor, host_lens: tuple[tuple[int, ...], tuple[int, ...]] | None) -> list[int]:
    """Indices of the sequences whose chunk goes to SDPA (none off CUDA or in float32)."""
    if host_lens is None or not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
        return []
    return [i for i, n in enumerate(host_lens[0]) if n >= SDPA_MIN_QUERY]


def _sdpa_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    host_lens: tuple[tuple[int, ...], tuple[int, ...]],
    i: int,
    block_size: int,
    scale: float,
    out: torch.Tensor,
) -> None:
    """Sequence `i`'s chunk: its keys gathered out of the blocks into one contiguous tensor, then
    SDPA with the causal mask aligned to the bottom right (the chunk follows its cached prefix)."""
    from torch.nn.attention.bias import causal_lower_right

    q_lens, ctx_lens = host_lens
    start, n = sum(q_lens[:i]), q_lens[i]
    total = ctx_lens[i] + n
    blocks = -(-total // block_size)
    rows = (block_tables[i, :blocks, None] * block_size + torch.arange(block_size, device=q.device)).reshape(
        -1
    )
    rows = rows[:total]
    k = k_cache[rows].transpose(0, 1)[None].to(q.dtype)  # (1, kv_heads, total, head_dim)
    v = v_cache[rows].transpose(0, 1)[None].to(q.dtype)
    qi = q[start : start + n].transpose(0, 1)[None]  # (1, heads, n, head_dim)
    o = F.scaled_dot_product_attention(
        qi, k, v, attn_mask=causal_lower_right(n, total), scale=scale, enable_gqa=True
    )
    out[start : start + n] = o[0].transpose(0, 1)


_LOG2E = 1.0 / math.log(2.0)
_Strided = tuple  # (tensor, stride_b, stride_t, stride_h); dim stride must be 1


def _launch_flash(
    q: _Strided,
    k: _Strided,
    v: _Strided,
    out: _Strided,
    q_starts: torch.Tensor,
    q_lens: torch.Tensor,
    ctx: torch.Tensor,
    kv_lens: torch.Tensor,
    block_tables: torch.Tensor | None,
    block_size: int,
    heads: int,
    kv_heads: int,
    hd: int,
    max_q: int,
    scale: float,
) -> None:
    """Query i of sequence b sits at `b * stride_b + (q_starts[b] + i) * stride_t`; key p at
    `b * stride_b + p * stride_t`, or, paged, at row `block_tables[b, p // bs] * bs + p % bs`."""
    for t in (q, k, v, out):
        assert t[0].stride(-1) == 1, "head_dim must be contiguous"
    # float32 inputs get exact float32 dots (Triton's default for them is tf32, ~1e-3 relative).
    fp32 = q[0].dtype == torch.float32
    # bf16: 128 x 64 tiles, 8 warps, 3 stages measured fastest of nine candidates on an H100 at
    # 8K queries after 0 / 24K / 120K cached keys (259-298 TFLOP/s against 153-172 for 64 x 32;
    # bench/kernels/prefill_tiles_gpu.py, bench/NOTES.md). float32 tiles are twice the bytes.
    block_m, block_n, warps, stages = (32, 32, 8, None) if fp32 else (128, 64, 8, 3)
    if FLASH_TILES is not None:
        block_m, block_n, warps, stages = FLASH_TILES
    extra = {} if stages is None else {"num_stages": stages}
    grid = (triton.cdiv(max_q, block_m), q_lens.shape[0] * heads)
    tables = block_tables if block_tables is not None else q_lens
    _flash_kernel[grid](
        q[0], k[0], v[0], out[0], q_starts, q_lens, ctx, kv_lens, tables,
        scale * _LOG2E, heads, heads // kv_heads, hd, max(block_size, 1), tables.stride(0),
        *q[1:], *k[1:], *v[1:], *out[1:],
        PAGED=block_tables is not None, IEEE=fp32, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=triton.next_power_of_2(hd), num_warps=warps, **extra,
    )  # fmt: skip


FLASH_TILES: tuple[int, int, int, int | None] | None = None
"""Override of the prefill kernel's (BLOCK_M, BLOCK_N, num_warps, num_stages), for tile sweeps
(`bench/kernels/prefill_tiles_gpu.py`); None keeps the defaults above."""

if HAS_TRITON:

    @triton.jit
    def _key_rows(p, seq64, table_ptr, stride_tb, block_size, stride_kb, stride_kt, PAGED: tl.constexpr):
        """Element offsets (int64) of keys at positions `p` of sequence `seq64`."""
        if PAGED:
            blk = tl.load(table_ptr + seq64 * stride_tb + p // block_size).to(tl.int64)
            return (blk * block_size + p % block_size) * stride_kt
        else:
            return seq64 * stride_kb + p.to(tl.int64) * stride_kt

    @triton.jit
    def _attend_tile(
        q, acc, m_i, l_i, n0, i, ctx, kv_len, dd, d_ok, kvh, seq64, k_ptr, v_ptr, table_ptr,
        stride_tb, block_size, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, qk_scale,
        PAGED: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """One key tile of the online softmax: keys `n0 .. n0 + BLOCK_N`; MASKED applies the
        causal mask and the sequence end (an unmasked tile lies wholly below both)."""
        p = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions
        p_ok = p < kv_len
        k_off = _key_rows(p, seq64, table_ptr, stride_tb, block_size, sk_b, sk_t, PAGED) + kvh * sk_h
        v_off = _key_rows(p, seq64, table_ptr, stride_tb, block_size, sv_b, sv_t, PAGED) + kvh * sv_h
        if MASKED:
            kv_mask = p_ok[:, None] & d_ok[None, :]
        else:
            kv_mask = d_ok[None, :]
        k = tl.load(k_ptr + k_off[:, None] + dd[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            s = tl.where((p[None, :] <= ctx + i[:, None]) & p_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        pr = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        v = tl.load(v_ptr + v_off[:, None] + dd[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(pr, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
        return acc, m_new, l_i

    # The block table's row stride is the batch's longest table, which changes from step to
    # step: specialised (Triton compiles a variant for a stride divisible by 16, and for 1), a
    # server met a new variant mid-load and stalled every stream for its compile (bench/NOTES.md).
    @triton.jit(do_not_specialize=["stride_tb"])
    def _flash_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, qs_ptr, ql_ptr, ctx_ptr, kvl_ptr, table_ptr,
        qk_scale, heads, group, head_dim, block_size, stride_tb,
        sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
        PAGED: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
        seq, head = pid_bh // heads, pid_bh % heads
        q_len = tl.load(ql_ptr + seq)
        if pid_m * BLOCK_M >= q_len:
            return
        seq64 = seq.to(tl.int64)
        kvh = head // group
        q_start = tl.load(qs_ptr + seq).to(tl.int64)
        ctx = tl.load(ctx_ptr + seq)
        kv_len = tl.load(kvl_ptr + seq)
        i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query index in the sequence
        dd = tl.arange(0, BLOCK_D)
        i_ok, d_ok = i < q_len, dd < head_dim
        q_rows = seq64 * sq_b + (q_start + i) * sq_t + head * sq_h
        q = tl.load(q_ptr + q_rows[:, None] + dd[None, :], mask=i_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        # Causal: query i sees keys up to ctx + i, so this tile needs keys below ctx + its last row + 1.
        hi = tl.minimum(kv_len, ctx + (pid_m + 1) * BLOCK_M)
        # Keys below ctx + the tile's first row are visible to every row of the tile: whole key
        # tiles there skip the causal mask (most of the work after a long cached prefix).
        full = (tl.minimum(ctx + pid_m * BLOCK_M, hi) // BLOCK_N) * BLOCK_N
        for n0 in range(0, full, BLOCK_N):
            acc, m_i, l_i = _attend_tile(
                q, acc, m_i, l_i, n0, i, ctx, kv_len, dd, d_ok, kvh, seq64, k_ptr, v_ptr, table_ptr,
                stride_tb, block_size, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, qk_scale,
                PAGED=PAGED, IEEE=IEEE, MASKED=False, BLOCK_N=BLOCK_N,
            )  # fmt: skip
        for n0 in range(full, hi, BLOCK_N):
            acc, m_i, l_i = _attend_tile(
                q, acc, m_i, l_i, n0, i, ctx, kv_len, dd, d_ok, kvh, seq64, k_ptr, v_ptr, table_ptr,
                stride_tb, block_size, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, qk_scale,
                PAGED=PAGED, IEEE=IEEE, MASKED=True, BLOCK_N=BLOCK_N,
            )  # fmt: skip
        out = acc / l_i[:, None]
        o_rows = seq64 * so_b + (q_start + i) * so_t + head * so_h
        tl.store(o_ptr + o_rows[:, None] + dd[None, :], out, mask=i_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _decode_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, len_ptr, o_ptr, lse_ptr,
        qk_scale, head_dim, splits, block_size, group,
        sq_b, sq_h, sq_d, sk_t, sk_h, sv_t, sv_h, stride_tb, so_b, so_h, so_s, so_d, sl_b, sl_h, sl_s,
        IEEE: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        seq, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        seq64 = seq.to(tl.int64)
        kv_len = tl.load(len_ptr + seq)
        g = tl.arange(0, GROUP_PAD)  # (GROUP_PAD,) query heads of this KV head, padded for tl.dot
        dd = tl.arange(0, BLOCK_D)
        g_ok, d_ok = g < group, dd < head_dim
        head = kvh * group + g
        q = tl.load(
            q_ptr + seq64 * sq_b + head[:, None] * sq_h + dd[None, :] * sq_d,
            mask=g_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (GROUP_PAD, BLOCK_D)
        m_i = tl.full((GROUP_PAD,), -1.0e30, dtype=tl.float32)
        l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)
        acc = tl.zeros((GROUP_PAD, BLOCK_D), dtype=tl.float32)
        # This sequence's keys in `splits` equal runs of whole tiles (empty runs at the end).
        chunk = tl.cdiv(tl.cdiv(kv_len, splits), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(kv_len, lo + chunk)
        for n0 in range(lo, hi, BLOCK_N):
            p = n0 + tl.arange(0, BLOCK_N)
            p_ok = p < hi
            blk = tl.load(table_ptr + seq64 * stride_tb + p // block_size, mask=p_ok, other=0).to(tl.int64)
            row = blk * block_size + p % block_size  # (BLOCK_N,) cache row of each key
            kv_mask = p_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + row[:, None] * sk_t + kvh * sk_h + dd[None, :], mask=kv_mask, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k.to(q.dtype)))
            s = s * qk_scale  # (GROUP_PAD, BLOCK_N)
            s = tl.where(p_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            pr = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(pr, axis=1)
            v = tl.load(v_ptr + row[:, None] * sv_t + kvh * sv_h + dd[None, :], mask=kv_mask, other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(pr, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(pr.to(q.dtype), v.to(q.dtype))
            m_i = m_new
        # An empty split (past this sequence's end) leaves lse = -inf: weight 0 in the combine.
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))  # log2 units
        o_off = seq64 * so_b + head[:, None] * so_h + split * so_s + dd[None, :] * so_d
        tl.store(o_ptr + o_off, out, mask=g_ok[:, None] & d_ok[None, :])
        tl.store(lse_ptr + seq64 * sl_b + head * sl_h + split * sl_s, lse, mask=g_ok)

    @triton.jit
    def _combine_kernel(
        o_ptr, lse_ptr, out_ptr, heads, head_dim, splits,
        so_b, so_h, so_s, so_d, sl_b, sl_h, sl_s, sout_b, sout_h, sout_d,
        SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        seq, head = (pid // heads).to(tl.int64), pid % heads
        s = tl.arange(0, SPLITS)
        dd = tl.arange(0, BLOCK_D)
        s_ok, d_ok = s < splits, dd < head_dim
        lse = tl.load(lse_ptr + seq * sl_b + head * sl_h + s * sl_s, mask=s_ok, other=float("-inf"))
        top = tl.max(lse, axis=0)
        # A sequence with no keys at all (seq_len 0, e.g. padding of a captured batch) gets zeros.
        w = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))  # (SPLITS,)
        o = tl.load(
            o_ptr + seq * so_b + head * so_h + s[:, None] * so_s + dd[None, :] * so_d,
            mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (SPLITS, BLOCK_D)
        total = tl.sum(w, axis=0)
        out = tl.sum(o * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
        tl.store(out_ptr + seq * sout_b + head * sout_h + dd * sout_d, out, mask=d_ok)
