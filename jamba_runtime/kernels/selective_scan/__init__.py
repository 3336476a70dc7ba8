"""Mamba v1 selective scan with softplus(dt + bias), the D skip and the silu(z) gate.

Three entry points share the Triton kernels in `triton_kernels.py`:

- `selective_scan` has `selective_scan_ref`'s padded contract (the model's reference path calls it);
- `selective_scan_varlen` is the packed prefill form: tokens of all sequences in one tensor split by
  `cu_seqlens`, each sequence starting from its state slot and writing the final state back there;
- `selective_state_update` is the decode step: one token per sequence, batched over slots.

Two prefill kernels. The `chunked` one runs one program per (sequence, block of channels) and walks
time in chunks: each chunk's recurrence `h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t` is an
associative scan over the chunk (pairs `(a, b)` compose as `(a1 a2, a2 b1 + b2)`), started from
the carried state. The `sequential` one gives each thread one channel with all its states and
takes one step after another, and cuts each sequence into segments run in parallel: a first
launch leaves each segment's end state from a zero start and its summed time steps (its decay is
`exp(A sum(dt))`), a small one chains those into true end states, and a last one runs each
segment from its true start state and writes y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jamba_runtime.kernels.backend import HAS_TRITON, use_triton

# Which prefill kernel runs: "chunked" (associative scan over chunks of time) or "sequential"
# (time cut into segments run in parallel, each one step after another, the state in registers).
# Both are kept so that bench/kernels/prefill_tiles_gpu.py can time each. "sequential" is the default:
# on an H100 it takes 0.65-0.78x the chunked kernel's time over 8,192 tokens at the Mini shape and
# 0.94-0.96x the TTFT at 32K-256K (bench/NOTES.md, 2026-12-07).
SCAN_VARIANT = "sequential"
SCAN_TILES: tuple[int, int, int] | None = None
"""Override of the chunked scan's (BLOCK_D, BLOCK_T, num_warps), for tile sweeps
(`bench/kernels/prefill_tiles_gpu.py`); None keeps the defaults chosen from `d_state`."""
SEQ_TILES: tuple[int, int, int] | None = None
"""Override of the sequential scan's (num_warps, segment length (0: chosen from the GPU), channels
per thread), for sweeps and tests; None keeps the defaults."""
# Sequential scan: programs of 4 warps per multiprocessor it aims for, and the shortest segment.
_PROGRAMS_PER_SM = 8
_MIN_SEGMENT = 64
_INTERPRET = False
if HAS_TRITON:
    import triton

    from jamba_runtime.kernels.selective_scan.triton_kernels import (
        _scan_kernel,
        _seg_combine_kernel,
        _seg_scan_kernel,
        _seg_state_kernel,
        _update_kernel,
    )

    try:
        from triton import knobs

        _INTERPRET = bool(knobs.runtime.interpret)
    except ImportError:  # triton < 3.4 has no knobs; the interpreter tuning below is then skipped
        pass

# Time steps materialised at once: bounds the (batch, d_inner, chunk, d_state) temporaries.
_CHUNK = 256


def selective_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    dt_bias: torch.Tensor,
    ssm_state: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan each sequence from its saved state.

    Args:
        x: `(batch, d_inner, L)` conv output.
        dt: `(batch, d_inner, L)` time steps before bias and softplus.
        A: `(d_inner, d_state)` float32, `-exp(A_log)`.
        B, C: `(batch, L, d_state)`.
        D: `(d_inner,)` skip; z: `(batch, d_inner, L)` gate; dt_bias: `(d_inner,)`.
        ssm_state: `(batch, d_inner, d_state)` float32 state before `x` (zeros for a new sequence).
        mask: `(batch, L)` bool, True at real tokens.

    Returns:
        `y (batch, d_inner, L)` in `x.dtype` and the float32 state after each sequence's last real token.
    """
    dtype = x.dtype
    # Padding gets dt = 0: exp(0 * A) = 1 and dt * B * x = 0, so the state passes through unchanged
    # and the state at the padded end equals the state at the sequence's real end.
    delta = F.softplus(dt.float() + dt_bias.float()[None, :, None]) * mask[:, None, :]
    h = ssm_state.float()
    length = x.shape[-1]
    ys = []
    for start in range(0, length, _CHUNK):
        end = min(start + _CHUNK, length)
        d = delta[:, :, start:end]
        dA = torch.exp(A[None, :, None, :] * d[..., None])  # (batch, d_inner, chunk, d_state)
        dBx = d[..., None] * B[:, None, start:end, :].float() * x[:, :, start:end, None].float()
        c = C[:, start:end, :].to(dtype)
        for t in range(end - start):
            h = dA[:, :, t] * h + dBx[:, :, t]
            ys.append(torch.matmul(h.to(dtype), c[:, t, :, None])[..., 0])
    y = torch.stack(ys, dim=-1)
    y = y + x * D[None, :, None]
    y = y * F.silu(z)
    return y.to(dtype), h


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    dt_bias: torch.Tensor,
    ssm_state: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan_ref`'s contract (same shapes); Triton on CUDA (see `backend.py`).

    Key difference to the reference: the state is contracted with C in float32 (the reference
    rounds the state to `x.dtype` first), so bf16 results are closer to the float32 ones.
    """
    if not use_triton(x):
        return selective_scan_ref(x, dt, A, B, C, D, z, dt_bias, ssm_state, mask)
    batch, d_inner, length = x.shape
    state = ssm_state.to(torch.float32).contiguous().clone()  # (batch, d_inner, d_state), updated in place
    y = torch.empty(batch, d_inner, length, dtype=x.dtype, device=x.device)
    zeros = torch.zeros(batch, dtype=torch.int32, device=x.device)
    lens = torch.full((batch,), length, dtype=torch.int32, device=x.device)
    slots = torch.arange(batch, dtype=torch.int32, device=x.device)
    # (batch, d_inner, L) tensors are indexed (b, t, d); B and C (batch, L, d_state) as (b, t, n).
    _launch_scan(
        (x, x.stride(0), x.stride(2), x.stride(1)), (dt, dt.stride(0), dt.stride(2), dt.stride(1)),
        (z, z.stride(0), z.stride(2), z.stride(1)), (B, *B.stride()), (C, *C.stride()),
        A, D, dt_bias, (y, y.stride(0), y.stride(2), y.stride(1)), state,
        zeros, lens, slots, None, mask.to(torch.int8), length,
    )  # fmt: skip
    return y, state


def selective_scan_varlen(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    dt_bias: torch.Tensor,
    ssm_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Packed prefill scan, each sequence from and back to its state slot.

    Args:
        x, dt, z: `(num_tokens, d_inner)` conv output, time steps before bias/softplus, gate
            (any strides, e.g. views of the projections' outputs).
        A: `(d_inner, d_state)` float32 `-exp(A_log)`; D, dt_bias: `(d_inner,)`.
        B, C: `(num_tokens, d_state)`.
        ssm_states: `(num_slots, d_inner, d_state)` float32: read at `state_indices`, overwritten
            there with the state after each sequence's last token.
        cu_seqlens: `(batch + 1,)` token offsets; state_indices: `(batch,)` slot per sequence
            (negative: skip the sequence, its output is left unset).
        has_initial_state: `(batch,)` bool; False starts from zeros whatever the slot held. None: all True.
        max_seqlen: the longest sequence's length, a host int (the `sequential` kernel sizes its
            segments from it); None reads it from `cu_seqlens`, a device sync.

    Returns:
        `y (num_tokens, d_inner)` in `x.dtype`.
    """
    if not use_triton(x):
        return _varlen_by_ref(
            x, dt, A, B, C, D, z, dt_bias, ssm_states, cu_seqlens, state_indices, has_initial_state
        )
    assert ssm_states.dtype == torch.float32, "SSM state slots are float32"
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # (num_tokens, d_inner)
    # A packed tensor is indexed (b, t, d) with batch stride 0: token = cu_seqlens[b] + t.
    _launch_scan(
        (x, 0, *x.stride()), (dt, 0, *dt.stride()), (z, 0, *z.stride()), (B, 0, *B.stride()),
        (C, 0, *C.stride()), A, D, dt_bias, (y, 0, *y.stride()), ssm_states,
        cu_seqlens[:-1].to(torch.int32), (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32),
        state_indices.to(torch.int32), has_initial_state, None, max_seqlen,
    )  # fmt: skip
    return y


def selective_state_update(
    ssm_states: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    dt_bias: torch.Tensor,
    state_indices: torch.Tensor,
) -> torch.Tensor:
    """Decode step: one token per sequence; each sequence's slot advanced in place.

    Args:
        ssm_states: `(num_slots, d_inner, d_state)` float32, updated at `state_indices`.
        x, dt, z: `(batch, d_inner)`; B, C: `(batch, d_state)`.
        A: `(d_inner, d_state)` float32; D, dt_bias: `(d_inner,)`.
        state_indices: `(batch,)` slot per sequence; negative skips the row (padding of a
            captured batch) and leaves its output unset.

    Returns:
        `y (batch, d_inner)` in `x.dtype`.
    """
    if not use_triton(x):
        keep = (state_indices >= 0).nonzero()[:, 0]
        y = torch.zeros_like(x)
        cu = torch.arange(len(keep) + 1, device=x.device)
        y[keep] = _varlen_by_ref(
            x[keep],
            dt[keep],
            A,
            B[keep],
            C[keep],
            D,
            z[keep],
            dt_bias,
            ssm_states,
            cu,
            state_indices[keep],
            None,
        )
        return y
    assert ssm_states.dtype == torch.float32, "SSM state slots are float32"
    batch, d_inner = x.shape
    d_state = A.shape[1]
    y = torch.empty_like(x)  # (batch, d_inner)
    block_n = triton.next_power_of_2(d_state)
    block_d = max(16, min(128, 2048 // block_n))
    grid = (batch, triton.cdiv(d_inner, block_d))
    _update_kernel[grid](
        x, dt, z, B, C, A, D, dt_bias, y, ssm_states, state_indices.to(torch.int32),
        d_inner, d_state, *x.stride(), *dt.stride(), *z.stride(), *B.stride(), *C.stride(), *A.stride(),
        *y.stride(), *ssm_states.stride(),
        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=4,
    )  # fmt: skip
    return y


def _varlen_by_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    dt_bias: torch.Tensor,
    ssm_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor | None,
) -> torch.Tensor:
    """The packed contract through `selective_scan_ref` (pad, run, unpad, write slots back)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    starts = cu_seqlens[:-1].tolist()
    batch, length = len(lens), max(lens)

    def pad(t: torch.Tensor, channels_first: bool) -> torch.Tensor:
        out = t.new_zeros(batch, length, t.shape[1])
        for b, (s, n) in enumerate(zip(starts, lens, strict=True)):
            out[b, :n] = t[s : s + n]
        return out.transpose(1, 2) if channels_first else out

    mask = torch.arange(length, device=x.device)[None, :] < torch.tensor(lens, device=x.device)[:, None]
    state = ssm_states[state_indices].clone()  # (batch, d_inner, d_state)
    if has_initial_state is not None:
        state[~has_initial_state.bool()] = 0
    y, new_state = selective_scan_ref(
        pad(x, True), pad(dt, True), A, pad(B, False), pad(C, False), D, pad(z, True), dt_bias, state, mask
    )
    ssm_states[state_indices] = new_state.to(ssm_states.dtype)
    return torch.cat([y[b, :, :n].t() for b, n in enumerate(lens)])


_Strided = tuple  # (tensor, stride_b, stride_t, stride_d or stride_n)


def _launch_scan(
    x: _Strided,
    dt: _Strided,
    z: _Strided,
    B: _Strided,
    C: _Strided,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    y: _Strided,
    states: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    slots: torch.Tensor,
    has_init: torch.Tensor | None,
    mask: torch.Tensor | None,
    max_seqlen: int | None,
) -> None:
    """Sequence b's token t lives at `b * stride_b + (starts[b] + t) * stride_t` in every tensor.
    `max_seqlen`: the longest sequence (None: read from `lens`, a device sync)."""
    d_inner, d_state = A.shape
    block_n = triton.next_power_of_2(d_state)
    m = mask if mask is not None else lens
    args = (
        x[0], dt[0], z[0], B[0], C[0], A, D, dt_bias, y[0], states, m, starts, lens, slots,
        has_init if has_init is not None else lens,
        d_inner, d_state, *x[1:], *dt[1:], *z[1:], *B[1:], *C[1:], *A.stride(), *y[1:], *states.stride(),
        m.stride(0), m.stride(-1),
    )  # fmt: skip
    if SCAN_VARIANT == "sequential":
        _launch_segmented(
            args, states, lens, d_inner, block_n, max_seqlen, mask is not None, has_init is not None
        )
        return
    # The chunk holds (BLOCK_T, BLOCK_D, BLOCK_N) float32 values several times over: 4K elements
    # per array keeps it in registers at 4 warps.
    block_d = max(4, min(16, 256 // block_n))
    block_t = max(4, 4096 // (block_d * block_n))
    warps = 4
    if SCAN_TILES is not None:
        block_d, block_t, warps = SCAN_TILES
    if _INTERPRET:
        # The interpreter applies the combine per element in Python: short chunks waste less of
        # it on the padding past a sequence's end.
        block_t = 4
    grid = (lens.shape[0], triton.cdiv(d_inner, block_d))
    _scan_kernel[grid](
        *args, HAS_MASK=mask is not None, HAS_INIT=has_init is not None,
        BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps,
    )  # fmt: skip


def _segment_length(batch: int, d_blocks: int, max_seqlen: int, device: torch.device) -> int:
    """Tokens per segment of the segmented scan: enough segments that batch x segments x channel
    blocks programs fill the GPU, none shorter than `_MIN_SEGMENT` (each segment costs a pass-1
    program's start and a step of the combine)."""
    if SEQ_TILES is not None and SEQ_TILES[1]:
        return SEQ_TILES[1]
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    want = max(1, -(-sms * _PROGRAMS_PER_SM // (batch * d_blocks)))
    return max(_MIN_SEGMENT, -(-max_seqlen // want))


def _launch_segmented(
    args: tuple,
    states: torch.Tensor,
    lens: torch.Tensor,
    d_inner: int,
    block_n: int,
    max_seqlen: int | None,
    has_mask: bool,
    has_init: bool,
) -> None:
    """The `sequential` variant: time split into segments run in parallel (pass 1: each segment's
    end state from zero and its summed time steps; a combine turning those into true end states;
    pass 2: each segment from its true start state, writing y). `args` is `_launch_scan`'s
    argument tuple for `_scan_kernel`."""
    warps, per_thread = (SEQ_TILES[0], SEQ_TILES[2]) if SEQ_TILES is not None else (4, 1)
    block_d = 32 * warps * per_thread  # every state of a channel in one thread's registers
    batch, d_blocks = lens.shape[0], triton.cdiv(d_inner, block_d)
    if max_seqlen is None:
        max_seqlen = int(lens.max()) if batch else 0
    seg_len = _segment_length(batch, d_blocks, max(max_seqlen, 1), states.device)
    n_seg = max(1, triton.cdiv(max_seqlen, seg_len))
    (x, dt, z, b, c, a, dd, bias, y, _, m, starts, lens_, slots, init, di, ds, *strides) = args
    sx, sdt, sz, sb, sc = (strides[i : i + 3] for i in range(0, 15, 3))
    sa, sy, ss, sm = strides[15:17], strides[17:20], strides[20:23], strides[23:25]
    if n_seg > 1:
        wh = torch.empty(batch, n_seg, d_inner, block_n, dtype=torch.float32, device=states.device)
        ws = torch.empty(batch, n_seg, d_inner, dtype=torch.float32, device=states.device)
        wi = torch.empty(batch, d_inner, block_n, dtype=torch.float32, device=states.device)
    else:  # never read: every sequence is one segment
        wh = ws = wi = states
    grid = (batch, n_seg, d_blocks)
    consts = dict(HAS_MASK=has_mask, HAS_INIT=has_init, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps)
    if n_seg > 1:
        _seg_state_kernel[grid](
            x, dt, b, a, bias, states, m, starts, lens_, slots, init, wh, ws, wi,
            di, ds, seg_len, n_seg, *sx, *sdt, *sb, *sa, *ss, *sm, block_n, 1, **consts,
        )  # fmt: skip
        _seg_combine_kernel[(batch, d_blocks)](
            a, lens_, slots, wh, ws, di, ds, seg_len, n_seg, *sa, block_n, 1,
            BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps,
        )  # fmt: skip
    _seg_scan_kernel[grid](
        x, dt, z, b, c, a, dd, bias, y, states, m, starts, lens_, slots, init, wh, ws, wi,
        di, ds, seg_len, n_seg, *sx, *sdt, *sz, *sb, *sc, *sa, *sy, *ss, *sm, block_n, 1, **consts,
    )  # fmt: skip
