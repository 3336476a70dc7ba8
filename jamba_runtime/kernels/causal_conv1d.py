"""Causal depthwise conv1d with a carried state (the Mamba conv), followed by SiLU.

Three entry points share two Triton kernels:

- `causal_conv1d` has `causal_conv1d_ref`'s padded contract (the model's reference path calls it);
- `causal_conv1d_varlen` is the packed prefill form: tokens of all sequences in one tensor split by
  `cu_seqlens`, each sequence's window read from and written back to its state slot in place;
- `causal_conv1d_update` is the decode step: one token per sequence, slots updated in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jamba_runtime.kernels.backend import HAS_TRITON, KernelBackendError, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    query_lens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the conv over new inputs that follow each sequence's saved window.

    Args:
        x: `(batch, d_inner, max_len)` new inputs, right-padded per sequence.
        weight: `(d_inner, d_conv)` depthwise filter.
        bias: `(d_inner,)` or None.
        conv_state: `(batch, d_inner, d_conv - 1)` the inputs before `x` (zeros for a new sequence).
        query_lens: `(batch,)` real length of each row of `x`.

    Returns:
        `silu(conv(x))` as `(batch, d_inner, max_len)` (padded positions hold garbage), and the new
        `(batch, d_inner, d_conv - 1)` window: the last `d_conv - 1` real inputs of each sequence.
    """
    batch, d_inner, _ = x.shape
    width = weight.shape[-1] - 1
    xin = torch.cat([conv_state.to(weight.dtype), x.to(weight.dtype)], dim=-1)  # (batch, d_inner, width + L)
    out = F.conv1d(xin, weight.unsqueeze(1), bias, groups=d_inner)
    out = F.silu(out).to(x.dtype)
    # The window ends at each sequence's last real input, not at the padded end.
    idx = query_lens.to(x.device)[:, None] + torch.arange(width, device=x.device)[None, :]
    new_state = xin.gather(2, idx[:, None, :].expand(batch, d_inner, width))
    return out, new_state


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    query_lens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_conv1d_ref`'s contract (same shapes); Triton on CUDA (see `backend.py`).

    Key difference to the reference: padded positions of the output are computed from the zero
    padding (finite, as the reference's), not left unset, so they never feed NaN to `x_proj`.
    """
    if not use_triton(x):
        return causal_conv1d_ref(x, weight, bias, conv_state, query_lens)
    batch, d_inner, max_len = x.shape
    # (batch, d_inner, d_conv - 1): a private copy the kernels update in place, as slots 0..batch-1.
    new_state = conv_state.to(weight.dtype).contiguous().clone()
    out = torch.empty_like(x)  # (batch, d_inner, max_len)
    starts = torch.zeros(batch, dtype=torch.int32, device=x.device)
    full = torch.full((batch,), max_len, dtype=torch.int32, device=x.device)
    slots = torch.arange(batch, dtype=torch.int32, device=x.device)
    _launch_conv(
        x, out, weight, bias, new_state, starts, full, slots, None, max_len, (x.stride(0), out.stride(0))
    )
    _launch_state(x, new_state, starts, query_lens.to(torch.int32), slots, None, x.stride(0))
    return out, new_state


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Packed prefill: `silu(conv(x) + bias)` per sequence, windows carried in state slots.

    Args:
        x: `(num_tokens, d_inner)` new inputs of all sequences (any strides, e.g. a view of the
            `in_proj` output).
        weight: `(d_inner, d_conv)`; bias: `(d_inner,)` or None.
        conv_states: `(num_slots, d_inner, d_conv - 1)`: read at `state_indices`, then overwritten
            there with the last `d_conv - 1` inputs of each sequence (older state if it ran fewer).
        cu_seqlens: `(batch + 1,)` token offsets of each sequence in `x`.
        state_indices: `(batch,)` slot of each sequence.
        has_initial_state: `(batch,)` bool; False reads the window as zeros (a new sequence,
            whatever its slot held). None: all True.
        max_seqlen: longest sequence (saves a host sync when the caller knows it).

    Returns:
        `(num_tokens, d_inner)` in `x.dtype`.
    """
    if not use_triton(x):
        return _varlen_by_ref(x, weight, bias, conv_states, cu_seqlens, state_indices, has_initial_state)
    starts = cu_seqlens[:-1].to(torch.int32)
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    if max_seqlen is None:
        max_seqlen = int(lens.max())
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # (num_tokens, d_inner)
    slots = state_indices.to(torch.int32)
    xt, ot = x.t(), out.t()  # (d_inner, num_tokens) views: the kernels index (channel, token)
    _launch_conv(
        xt, ot, weight, bias, conv_states, starts, lens, slots, has_initial_state, max_seqlen, (0, 0)
    )
    _launch_state(xt, conv_states, starts, lens, slots, has_initial_state, 0)
    return out


def causal_conv1d_update(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    state_indices: torch.Tensor,
) -> torch.Tensor:
    """Decode step: one new input per sequence, its slot's window shifted by one in place.

    Args:
        x: `(batch, d_inner)`.
        weight: `(d_inner, d_conv)`; bias: `(d_inner,)` or None.
        conv_states: `(num_slots, d_inner, d_conv - 1)`, updated at `state_indices`.
        state_indices: `(batch,)` slot per sequence; a negative index skips the row (padding of
            a captured batch) and leaves its output unset.

    Returns:
        `(batch, d_inner)` `silu(conv)` in `x.dtype`.
    """
    if not use_triton(x):
        cu = torch.arange(x.shape[0] + 1, device=x.device)
        keep = state_indices >= 0
        out = torch.zeros_like(x)
        if bool(keep.all()):
            return _varlen_by_ref(x, weight, bias, conv_states, cu, state_indices, None)
        idx = keep.nonzero()[:, 0]
        out[idx] = _varlen_by_ref(
            x[idx], weight, bias, conv_states, cu[: len(idx) + 1], state_indices[idx], None
        )
        return out
    batch, d_inner = x.shape
    width = weight.shape[1] - 1
    _check_width(width)
    assert conv_states.shape[1:] == (d_inner, width), f"conv_states {tuple(conv_states.shape)}"
    out = torch.empty_like(x)  # (batch, d_inner)
    block_d = min(256, triton.next_power_of_2(d_inner))
    grid = (batch, triton.cdiv(d_inner, block_d))
    _conv_update_kernel[grid](
        x, out, weight, bias if bias is not None else weight, conv_states, state_indices.to(torch.int32),
        d_inner, x.stride(0), x.stride(1), out.stride(0), out.stride(1), weight.stride(0), weight.stride(1),
        conv_states.stride(0), conv_states.stride(1), conv_states.stride(2),
        HAS_BIAS=bias is not None, WIDTH=width, BLOCK_D=block_d,
    )  # fmt: skip
    return out


def _varlen_by_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor | None,
) -> torch.Tensor:
    """The packed contract through `causal_conv1d_ref` (pad, run, unpad, write slots back)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    batch, d_inner = len(lens), x.shape[1]
    xp = x.new_zeros(batch, d_inner, max(lens))  # (batch, d_inner, max_len)
    for b, (s, n) in enumerate(zip(cu_seqlens[:-1].tolist(), lens, strict=True)):
        xp[b, :, :n] = x[s : s + n].t()
    state = conv_states[state_indices].clone()  # (batch, d_inner, d_conv - 1)
    if has_initial_state is not None:
        state[~has_initial_state.bool()] = 0
    out, new_state = causal_conv1d_ref(xp, weight, bias, state, torch.tensor(lens, device=x.device))
    conv_states[state_indices] = new_state.to(conv_states.dtype)
    return torch.cat([out[b, :, :n].t() for b, n in enumerate(lens)])


def _check_width(width: int) -> None:
    if width > 4:
        raise KernelBackendError(
            f"mamba_d_conv {width + 1} is over the Triton conv kernels' limit of 5: "
            "use kernel backend 'reference'"
        )


def _launch_conv(
    x: torch.Tensor,
    out: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    states: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    slots: torch.Tensor,
    has_init: torch.Tensor | None,
    max_len: int,
    stride_b: tuple[int, int],
) -> None:
    """`x`, `out`: `(batch or 1, d_inner, tokens)` views; sequence b is tokens
    `starts[b] .. starts[b] + lens[b]` of row b (`stride_b` apart for x and out; 0 for a packed batch)."""
    d_inner = weight.shape[0]
    width = weight.shape[1] - 1
    _check_width(width)
    # 32 x 64 at 8 warps: ~100 registers on sm_90 (64 x 64 at 4 warps spilled: 255 + stack).
    block_t, block_d = 32, min(64, triton.next_power_of_2(d_inner))
    grid = (triton.cdiv(max_len, block_t), starts.shape[0], triton.cdiv(d_inner, block_d))
    _conv_varlen_kernel[grid](
        x, out, weight, bias if bias is not None else weight, states, starts, lens, slots,
        has_init if has_init is not None else lens,
        d_inner, stride_b[0], x.stride(-2), x.stride(-1), stride_b[1], out.stride(-2), out.stride(-1),
        weight.stride(0), weight.stride(1), states.stride(0), states.stride(1), states.stride(2),
        HAS_BIAS=bias is not None, HAS_INIT=has_init is not None, WIDTH=width,
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=8,
    )  # fmt: skip


def _launch_state(
    x: torch.Tensor,
    states: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    slots: torch.Tensor,
    has_init: torch.Tensor | None,
    stride_b: int,
) -> None:
    # A second launch: the conv kernel's first time block reads the old window while its last
    # writes the new one, so in one launch they would race.
    d_inner, width = states.shape[1], states.shape[2]
    block_d = min(256, triton.next_power_of_2(d_inner))
    grid = (starts.shape[0], triton.cdiv(d_inner, block_d))
    _conv_state_kernel[grid](
        x, states, starts, lens, slots, has_init if has_init is not None else lens,
        d_inner, stride_b, x.stride(-2), x.stride(-1), states.stride(0), states.stride(1), states.stride(2),
        HAS_INIT=has_init is not None, WIDTH=width, BLOCK_D=block_d,
    )  # fmt: skip


if HAS_TRITON:

    @triton.jit
    def _conv_varlen_kernel(
        x_ptr, out_ptr, w_ptr, b_ptr, s_ptr, start_ptr, len_ptr, slot_ptr, init_ptr,
        d_inner, stride_xb, stride_xd, stride_xt, stride_ob, stride_od, stride_ot,
        stride_wd, stride_wk, stride_ss, stride_sd, stride_sk,
        HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, WIDTH: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_t, seq, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        length = tl.load(len_ptr + seq)
        if pid_t * BLOCK_T >= length:
            return
        start = tl.load(start_ptr + seq).to(tl.int64)
        slot = tl.load(slot_ptr + seq).to(tl.int64)
        use_state = slot >= 0
        if HAS_INIT:
            use_state = use_state & (tl.load(init_ptr + seq) != 0)
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,) position in the sequence
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) channel
        d_ok = d < d_inner
        x_base = x_ptr + seq.to(tl.int64) * stride_xb + d[None, :] * stride_xd
        acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for k in tl.static_range(WIDTH + 1):
            # Tap k sees the input at t - WIDTH + k: from x when >= 0, else from the saved window.
            src = t - WIDTH + k  # (BLOCK_T,)
            in_x = (src >= 0) & (t < length)
            xv = tl.load(
                x_base + (start + src)[:, None] * stride_xt, mask=in_x[:, None] & d_ok[None, :], other=0.0
            )
            in_s = (src < 0) & (t < length) & use_state
            sv = tl.load(
                s_ptr + slot * stride_ss + d[None, :] * stride_sd + (WIDTH + src)[:, None] * stride_sk,
                mask=in_s[:, None] & d_ok[None, :],
                other=0.0,
            )
            w = tl.load(w_ptr + d * stride_wd + k * stride_wk, mask=d_ok, other=0.0).to(tl.float32)
            acc += (xv.to(tl.float32) + sv.to(tl.float32)) * w[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
        y = acc / (1.0 + tl.exp(-acc))  # silu
        o_ptrs = (
            out_ptr + seq.to(tl.int64) * stride_ob + d[None, :] * stride_od + (start + t)[:, None] * stride_ot
        )
        tl.store(o_ptrs, y, mask=(t < length)[:, None] & d_ok[None, :])

    @triton.jit
    def _conv_state_kernel(
        x_ptr, s_ptr, start_ptr, len_ptr, slot_ptr, init_ptr,
        d_inner, stride_xb, stride_xd, stride_xt, stride_ss, stride_sd, stride_sk,
        HAS_INIT: tl.constexpr, WIDTH: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        seq, pid_d = tl.program_id(0), tl.program_id(1)
        slot = tl.load(slot_ptr + seq).to(tl.int64)
        if slot < 0:
            return
        start = tl.load(start_ptr + seq).to(tl.int64)
        length = tl.load(len_ptr + seq)
        use_state = True
        if HAS_INIT:
            use_state = tl.load(init_ptr + seq) != 0
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < d_inner
        s_base = s_ptr + slot * stride_ss + d * stride_sd
        x_base = x_ptr + seq.to(tl.int64) * stride_xb + d * stride_xd
        # New window entry j is the input at length - WIDTH + j: from x, or for a sequence shorter
        # than the window from the old window at length + j. Every load comes before any store and
        # a channel's loads and stores sit in the same lane, so the in-place update cannot race.
        # Unrolled by hand for WIDTH <= 4 (d_conv <= 5): jit code has no lists.
        v0 = _window_entry(x_base, s_base, start, length, stride_xt, stride_sk, d_ok, use_state, 0, WIDTH)
        v1 = _window_entry(x_base, s_base, start, length, stride_xt, stride_sk, d_ok, use_state, 1, WIDTH)
        v2 = _window_entry(x_base, s_base, start, length, stride_xt, stride_sk, d_ok, use_state, 2, WIDTH)
        v3 = _window_entry(x_base, s_base, start, length, stride_xt, stride_sk, d_ok, use_state, 3, WIDTH)
        tl.store(s_base, v0, mask=d_ok)
        tl.store(s_base + stride_sk, v1, mask=d_ok & (WIDTH > 1))
        tl.store(s_base + 2 * stride_sk, v2, mask=d_ok & (WIDTH > 2))
        tl.store(s_base + 3 * stride_sk, v3, mask=d_ok & (WIDTH > 3))

    @triton.jit
    def _window_entry(x_base, s_base, start, length, stride_xt, stride_sk, d_ok, use_state, j, WIDTH):
        src = length - WIDTH + j
        ok = d_ok & (j < WIDTH)
        xv = tl.load(x_base + (start + src) * stride_xt, mask=ok & (src >= 0), other=0.0)
        sv = tl.load(s_base + (length + j) * stride_sk, mask=ok & (src < 0) & use_state, other=0.0)
        return tl.where(src >= 0, xv.to(tl.float32), sv.to(tl.float32))

    @triton.jit
    def _conv_update_kernel(
        x_ptr, out_ptr, w_ptr, b_ptr, s_ptr, slot_ptr,
        d_inner, stride_xb, stride_xd, stride_ob, stride_od, stride_wd, stride_wk,
        stride_ss, stride_sd, stride_sk,
        HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        seq, pid_d = tl.program_id(0), tl.program_id(1)
        slot = tl.load(slot_ptr + seq).to(tl.int64)
        if slot < 0:
            return
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < d_inner
        s_base = s_ptr + slot * stride_ss + d * stride_sd
        xv = tl.load(x_ptr + seq.to(tl.int64) * stride_xb + d * stride_xd, mask=d_ok, other=0.0)
        acc = xv.to(tl.float32) * tl.load(w_ptr + d * stride_wd + WIDTH * stride_wk, mask=d_ok).to(tl.float32)
        # Taps 0..WIDTH-1 read the window, unrolled by hand for WIDTH <= 4 (jit code has no lists);
        # all loads precede the shifted stores.
        w0 = _tap(s_base, w_ptr, d, d_ok, stride_sk, stride_wd, stride_wk, 0, WIDTH)
        w1 = _tap(s_base, w_ptr, d, d_ok, stride_sk, stride_wd, stride_wk, 1, WIDTH)
        w2 = _tap(s_base, w_ptr, d, d_ok, stride_sk, stride_wd, stride_wk, 2, WIDTH)
        w3 = _tap(s_base, w_ptr, d, d_ok, stride_sk, stride_wd, stride_wk, 3, WIDTH)
        acc += w0[1] + w1[1] + w2[1] + w3[1]
        if HAS_BIAS:
            acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        tl.store(
            out_ptr + seq.to(tl.int64) * stride_ob + d * stride_od, acc / (1.0 + tl.exp(-acc)), mask=d_ok
        )
        # Shift left by one: entry k takes entry k + 1, the last takes x.
        xf = xv.to(tl.float32)
        tl.store(s_base, tl.where(WIDTH > 1, w1[0], xf), mask=d_ok)
        tl.store(s_base + stride_sk, tl.where(WIDTH > 2, w2[0], xf), mask=d_ok & (WIDTH > 1))
        tl.store(s_base + 2 * stride_sk, tl.where(WIDTH > 3, w3[0], xf), mask=d_ok & (WIDTH > 2))
        tl.store(s_base + 3 * stride_sk, xf, mask=d_ok & (WIDTH > 3))

    @triton.jit
    def _tap(s_base, w_ptr, d, d_ok, stride_sk, stride_wd, stride_wk, k, WIDTH):
        """(window entry k, its product with tap k) as float32; zeros past the window."""
        ok = d_ok & (k < WIDTH)
        sv = tl.load(s_base + k * stride_sk, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + d * stride_wd + k * stride_wk, mask=ok, other=0.0).to(tl.float32)
        return sv, sv * w
