"""The `@triton.jit` kernels of the selective scan; shapes, strides and launch choices are
documented in the wrappers (`jamba_runtime.kernels.selective_scan`)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    # Composition of h -> a1 * h + b1 then h -> a2 * h + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(v):
    # torch's softplus threshold: linear above 20, where exp would overflow float32 soon after.
    # log1p(u) as log(1 + u) * u / ((1 + u) - 1): accurate for small u, which log(1 + u) is not.
    u = tl.exp(tl.minimum(v, 20.0))
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
    return tl.where(v > 20.0, v, log1p)


@triton.jit
def _scan_kernel(
    x_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a_ptr, d_ptr, bias_ptr, y_ptr, s_ptr, m_ptr,
    start_ptr, len_ptr, slot_ptr, init_ptr,
    d_inner, d_state,
    sx_b, sx_t, sx_d, sdt_b, sdt_t, sdt_d, sz_b, sz_t, sz_d,
    sb_b, sb_t, sb_n, sc_b, sc_t, sc_n, sa_d, sa_n, sy_b, sy_t, sy_d,
    ss_s, ss_d, ss_n, sm_b, sm_t,
    HAS_MASK: tl.constexpr, HAS_INIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    seq, pid_d = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    if slot < 0:
        return
    seq64 = seq.to(tl.int64)
    start = tl.load(start_ptr + seq).to(tl.int64)
    length = tl.load(len_ptr + seq)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    d_ok, n_ok = d < d_inner, n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]  # (BLOCK_D, BLOCK_N)
    a = tl.load(a_ptr + d[:, None] * sa_d + n[None, :] * sa_n, mask=dn_ok, other=0.0).to(tl.float32)
    skip = tl.load(d_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    s_ptrs = s_ptr + slot * ss_s + d[:, None] * ss_d + n[None, :] * ss_n
    h = tl.load(s_ptrs, mask=dn_ok, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    if HAS_INIT:
        # where, not a multiply: a slot left NaN by an earlier request must not leak into a fresh one.
        h = tl.where(tl.load(init_ptr + seq) != 0, h, 0.0)
    tt = tl.arange(0, BLOCK_T)
    for t0 in range(0, length, BLOCK_T):
        t = t0 + tt  # (BLOCK_T,)
        t_ok = t < length
        td_ok = t_ok[:, None] & d_ok[None, :]  # (BLOCK_T, BLOCK_D)
        tn_ok = t_ok[:, None] & n_ok[None, :]  # (BLOCK_T, BLOCK_N)
        tok = (start + t).to(tl.int64)[:, None]
        x = tl.load(x_ptr + seq64 * sx_b + tok * sx_t + d[None, :] * sx_d, mask=td_ok, other=0.0).to(
            tl.float32
        )
        dt = tl.load(dt_ptr + seq64 * sdt_b + tok * sdt_t + d[None, :] * sdt_d, mask=td_ok, other=0.0)
        bm = tl.load(b_ptr + seq64 * sb_b + tok * sb_t + n[None, :] * sb_n, mask=tn_ok, other=0.0)
        cm = tl.load(c_ptr + seq64 * sc_b + tok * sc_t + n[None, :] * sc_n, mask=tn_ok, other=0.0)
        delta = _softplus(dt.to(tl.float32) + bias[None, :])  # (BLOCK_T, BLOCK_D)
        keep = t_ok
        if HAS_MASK:
            keep = keep & (tl.load(m_ptr + seq64 * sm_b + t * sm_t, mask=t_ok, other=0) != 0)
        # dt = 0 past the end (and at masked padding): exp(0) = 1 and no input, so the state
        # passes through and the chunk's last row is the state at the last real token.
        delta = tl.where(keep[:, None], delta, 0.0)
        da = tl.exp(delta[:, :, None] * a[None, :, :])  # (BLOCK_T, BLOCK_D, BLOCK_N)
        dbx = (delta * x)[:, :, None] * bm.to(tl.float32)[:, None, :]  # (BLOCK_T, BLOCK_D, BLOCK_N)
        a_cum, b_cum = tl.associative_scan((da, dbx), 0, _combine)
        hs = a_cum * h[None, :, :] + b_cum  # (BLOCK_T, BLOCK_D, BLOCK_N) state after each step
        y = tl.sum(hs * cm.to(tl.float32)[:, None, :], axis=2)  # (BLOCK_T, BLOCK_D)
        z = tl.load(z_ptr + seq64 * sz_b + tok * sz_t + d[None, :] * sz_d, mask=td_ok, other=0.0).to(
            tl.float32
        )
        y = (y + x * skip[None, :]) * (z / (1.0 + tl.exp(-z)))
        tl.store(y_ptr + seq64 * sy_b + tok * sy_t + d[None, :] * sy_d, y, mask=td_ok)
        h = tl.sum(tl.where((tt == BLOCK_T - 1)[:, None, None], hs, 0.0), axis=0)
    tl.store(s_ptrs, h, mask=dn_ok)


# The sequential scan's tensors are (BLOCK_D, BLOCK_N) and each thread should hold every state of
# its channel, so that a step needs no exchange between threads. Triton lays a tensor out from
# the contiguity of its loads: the strides along d_state, of A, of the slots and of the workspace
# are therefore passed unspecialised (a stride of 1 would be specialised and make d_state the
# vectorised, thread-spread axis).
_NOT_SPECIALISED = ["sb_n", "sc_n", "sa_d", "sa_n", "ss_d", "ss_n", "sw_d", "sw_n"]


@triton.jit(do_not_specialize=_NOT_SPECIALISED)
def _seg_state_kernel(
    x_ptr, dt_ptr, b_ptr, a_ptr, bias_ptr, s_ptr, m_ptr, start_ptr, len_ptr, slot_ptr, init_ptr,
    wh_ptr, ws_ptr, wi_ptr,
    d_inner, d_state, seg_len, n_seg,
    sx_b, sx_t, sx_d, sdt_b, sdt_t, sdt_d, sb_b, sb_t, sb_n, sa_d, sa_n,
    ss_s, ss_d, ss_n, sm_b, sm_t, sw_d, sw_n,
    HAS_MASK: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Pass 1 of the segmented scan: each segment but a sequence's last, one step after another from
    # a zero state (segment 0 from the slot's state), leaves its end state in wh and the sum of its
    # time steps in ws; segment 0 also copies the slot's state to wi for pass 2 (the slot itself is
    # overwritten by pass 2's last segment while other segments may still be starting).
    seq, seg, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    length = tl.load(len_ptr + seq)
    if slot < 0:
        return
    if seg >= tl.maximum(tl.cdiv(length, seg_len), 1) - 1:
        return
    seq64 = seq.to(tl.int64)
    start = tl.load(start_ptr + seq).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < d_inner, n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]  # (BLOCK_D, BLOCK_N)
    # exp(dt A) as exp2(dt A log2(e)): one multiply fewer per state and step.
    a2 = tl.load(a_ptr + d[:, None] * sa_d + n[None, :] * sa_n, mask=dn_ok, other=0.0) * 1.4426950408889634
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    dn = d[:, None] * sw_d + n[None, :] * sw_n  # workspace: (d_inner, BLOCK_N) per (sequence, segment)
    if seg == 0:
        h = tl.load(s_ptr + slot * ss_s + d[:, None] * ss_d + n[None, :] * ss_n, mask=dn_ok, other=0.0)
        if HAS_INIT:
            # where, not a multiply: a slot left NaN by an earlier request must not leak into a fresh one.
            h = tl.where(tl.load(init_ptr + seq) != 0, h, 0.0)
        tl.store(wi_ptr + seq64 * d_inner * BLOCK_N + dn, h, mask=dn_ok)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    b_off = n[None, :] * sb_n + 0 * d[:, None]  # (BLOCK_D, BLOCK_N): every thread loads all of B_t
    t0 = seg * seg_len
    for t in range(t0, tl.minimum(t0 + seg_len, length)):
        tok = start + t
        x = tl.load(x_ptr + seq64 * sx_b + tok * sx_t + d * sx_d, mask=d_ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + seq64 * sdt_b + tok * sdt_t + d * sdt_d, mask=d_ok, other=0.0).to(tl.float32)
        bv = tl.load(b_ptr + (seq64 * sb_b + tok * sb_t) + b_off, mask=dn_ok, other=0.0).to(tl.float32)
        delta = _softplus(dt + bias)  # (BLOCK_D,)
        if HAS_MASK:
            delta = delta * (tl.load(m_ptr + seq64 * sm_b + t * sm_t) != 0).to(tl.float32)
        dsum += delta
        h = tl.exp2(delta[:, None] * a2) * h + bv * (delta * x)[:, None]
    w = (seq64 * n_seg + seg) * d_inner * BLOCK_N
    tl.store(wh_ptr + w + dn, h, mask=dn_ok)
    tl.store(ws_ptr + (seq64 * n_seg + seg) * d_inner + d, dsum, mask=d_ok)


@triton.jit(do_not_specialize=_NOT_SPECIALISED)
def _seg_combine_kernel(
    a_ptr, len_ptr, slot_ptr, wh_ptr, ws_ptr,
    d_inner, d_state, seg_len, n_seg, sa_d, sa_n, sw_d, sw_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Between the passes: turns pass 1's end states into true ones, in place, one segment after
    # another (H_0 = wh_0, H_s = exp(A ws_s) H_{s-1} + wh_s), so that pass 2's segment k starts
    # from wh_{k-1}.
    seq, pid_d = tl.program_id(0), tl.program_id(1)
    if tl.load(slot_ptr + seq) < 0:
        return
    segs = tl.maximum(tl.cdiv(tl.load(len_ptr + seq), seg_len), 1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < d_inner, n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    a2 = tl.load(a_ptr + d[:, None] * sa_d + n[None, :] * sa_n, mask=dn_ok, other=0.0) * 1.4426950408889634
    dn = d[:, None] * sw_d + n[None, :] * sw_n
    w0 = seq.to(tl.int64) * n_seg
    h = tl.load(wh_ptr + w0 * d_inner * BLOCK_N + dn, mask=dn_ok, other=0.0)
    for s in range(1, segs - 1):
        decay = tl.exp2(tl.load(ws_ptr + (w0 + s) * d_inner + d, mask=d_ok, other=0.0)[:, None] * a2)
        h = decay * h + tl.load(wh_ptr + (w0 + s) * d_inner * BLOCK_N + dn, mask=dn_ok, other=0.0)
        tl.store(wh_ptr + (w0 + s) * d_inner * BLOCK_N + dn, h, mask=dn_ok)


@triton.jit(do_not_specialize=_NOT_SPECIALISED)
def _seg_scan_kernel(
    x_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a_ptr, d_ptr, bias_ptr, y_ptr, s_ptr, m_ptr,
    start_ptr, len_ptr, slot_ptr, init_ptr, wh_ptr, ws_ptr, wi_ptr,
    d_inner, d_state, seg_len, n_seg,
    sx_b, sx_t, sx_d, sdt_b, sdt_t, sdt_d, sz_b, sz_t, sz_d,
    sb_b, sb_t, sb_n, sc_b, sc_t, sc_n, sa_d, sa_n, sy_b, sy_t, sy_d,
    ss_s, ss_d, ss_n, sm_b, sm_t, sw_d, sw_n,
    HAS_MASK: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Pass 2: each segment from its true start state (segment k from the combined wh_{k-1},
    # segment 0 from the slot's state), one step after another writing y; the sequence's last
    # segment writes the final state back to the slot.
    seq, seg, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    length = tl.load(len_ptr + seq)
    segs = tl.maximum(tl.cdiv(length, seg_len), 1)
    if slot < 0:
        return
    if seg >= segs:
        return
    seq64 = seq.to(tl.int64)
    start = tl.load(start_ptr + seq).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < d_inner, n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]  # (BLOCK_D, BLOCK_N)
    a2 = tl.load(a_ptr + d[:, None] * sa_d + n[None, :] * sa_n, mask=dn_ok, other=0.0) * 1.4426950408889634
    skip = tl.load(d_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    dn = d[:, None] * sw_d + n[None, :] * sw_n
    s_ptrs = s_ptr + slot * ss_s + d[:, None] * ss_d + n[None, :] * ss_n
    if segs == 1:
        h = tl.load(s_ptrs, mask=dn_ok, other=0.0)
        if HAS_INIT:
            h = tl.where(tl.load(init_ptr + seq) != 0, h, 0.0)
    elif seg == 0:
        h = tl.load(wi_ptr + seq64 * d_inner * BLOCK_N + dn, mask=dn_ok, other=0.0)
    else:
        h = tl.load(wh_ptr + (seq64 * n_seg + seg - 1) * d_inner * BLOCK_N + dn, mask=dn_ok, other=0.0)
    # (BLOCK_D, BLOCK_N) int32 offsets: every thread loads all of B_t and C_t (one address per warp).
    b_off = n[None, :] * sb_n + 0 * d[:, None]
    c_off = n[None, :] * sc_n + 0 * d[:, None]
    t0 = seg * seg_len
    for t in range(t0, tl.minimum(t0 + seg_len, length)):
        tok = start + t
        x = tl.load(x_ptr + seq64 * sx_b + tok * sx_t + d * sx_d, mask=d_ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + seq64 * sdt_b + tok * sdt_t + d * sdt_d, mask=d_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + seq64 * sz_b + tok * sz_t + d * sz_d, mask=d_ok, other=0.0).to(tl.float32)
        bv = tl.load(b_ptr + (seq64 * sb_b + tok * sb_t) + b_off, mask=dn_ok, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + (seq64 * sc_b + tok * sc_t) + c_off, mask=dn_ok, other=0.0).to(tl.float32)
        delta = _softplus(dt + bias)  # (BLOCK_D,)
        if HAS_MASK:
            delta = delta * (tl.load(m_ptr + seq64 * sm_b + t * sm_t) != 0).to(tl.float32)
        h = tl.exp2(delta[:, None] * a2) * h + bv * (delta * x)[:, None]
        y = tl.sum(h * cv, axis=1) + x * skip
        tl.store(y_ptr + seq64 * sy_b + tok * sy_t + d * sy_d, y * (z / (1.0 + tl.exp(-z))), mask=d_ok)
    if seg == segs - 1:
        tl.store(s_ptrs, h, mask=dn_ok)


@triton.jit
def _update_kernel(
    x_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a_ptr, d_ptr, bias_ptr, y_ptr, s_ptr, slot_ptr,
    d_inner, d_state,
    sx_b, sx_d, sdt_b, sdt_d, sz_b, sz_d, sb_b, sb_n, sc_b, sc_n, sa_d, sa_n, sy_b, sy_d,
    ss_s, ss_d, ss_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    seq, pid_d = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    if slot < 0:
        return
    seq64 = seq.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < d_inner, n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]  # (BLOCK_D, BLOCK_N)
    s_ptrs = s_ptr + slot * ss_s + d[:, None] * ss_d + n[None, :] * ss_n
    h = tl.load(s_ptrs, mask=dn_ok, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + d[:, None] * sa_d + n[None, :] * sa_n, mask=dn_ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + seq64 * sx_b + d * sx_d, mask=d_ok, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + seq64 * sdt_b + d * sdt_d, mask=d_ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + seq64 * sz_b + d * sz_d, mask=d_ok, other=0.0).to(tl.float32)
    bv = tl.load(b_ptr + seq64 * sb_b + n * sb_n, mask=n_ok, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + seq64 * sc_b + n * sc_n, mask=n_ok, other=0.0).to(tl.float32)
    delta = _softplus(dt + tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32))  # (BLOCK_D,)
    h = tl.exp(delta[:, None] * a) * h + (delta * x)[:, None] * bv[None, :]
    tl.store(s_ptrs, h, mask=dn_ok)
    y = tl.sum(h * cv[None, :], axis=1) + x * tl.load(d_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + seq64 * sy_b + d * sy_d, y * (z / (1.0 + tl.exp(-z))), mask=d_ok)
