"""RMSNorm, optionally fused with the residual add before it."""

from __future__ import annotations

import torch

from jamba_runtime.kernels.backend import HAS_TRITON, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x (..., hidden)` normalised in float32, cast back to `x.dtype`, then scaled by `weight (hidden,)`.

    The cast happens before the weight multiply, as in transformers' `JambaRMSNorm`, so bf16
    outputs round the same way.
    """
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rms_norm_ref(x + residual), x + residual)`; the sum is rounded to `x.dtype` first, as the
    model's `x = x + h` does before the next norm."""
    s = x + residual
    return rms_norm_ref(s, weight, eps), s


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with `rms_norm_ref`'s contract; Triton on CUDA (see `backend.py`)."""
    if use_triton(x):
        return rms_norm_triton(x, weight, eps)[0]
    return rms_norm_ref(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fused_add_rms_norm_ref`'s contract in one pass over memory on CUDA: returns
    `(normed, x + residual)`."""
    if use_triton(x):
        normed, s = rms_norm_triton(x, weight, eps, residual=residual)
        assert s is not None
        return normed, s
    return fused_add_rms_norm_ref(x, residual, weight, eps)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton RMSNorm (+ residual add).

    Args:
        x: `(..., hidden)`, last dim contiguous (other dims any layout that reshapes to rows).
        weight: `(hidden,)`.
        residual: `(..., hidden)` like `x`, or None.

    Returns:
        `normed (..., hidden)` in `torch.result_type(weight, x)` (as `weight * x` promotes), and
        `x + residual` in `x.dtype` (None without a residual).
    """
    hidden = x.shape[-1]
    assert weight.shape == (hidden,), f"weight {tuple(weight.shape)} for hidden {hidden}"
    x2 = x.reshape(-1, hidden)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty(rows, hidden, dtype=torch.result_type(weight, x), device=x.device)
    if residual is not None:
        assert residual.shape == x.shape, f"residual {tuple(residual.shape)} vs x {tuple(x.shape)}"
        r2 = residual.reshape(-1, hidden)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        res_out = torch.empty(rows, hidden, dtype=x.dtype, device=x.device)
    else:
        r2, res_out = x2, out  # never read or written: HAS_RES is off
    block = triton.next_power_of_2(hidden)
    # Several short rows per program (the dt/B/C norms have hidden 16..256): one row each would
    # leave most lanes idle.
    rows_per_prog = max(1, min(64, 2048 // block))
    num_warps = min(max(block * rows_per_prog // 512, 1), 8)
    grid = (triton.cdiv(rows, rows_per_prog),)
    _rms_norm_kernel[grid](
        x2, r2, weight, out, res_out,
        rows, hidden, x2.stride(0), r2.stride(0), out.stride(0), res_out.stride(0), eps,
        HAS_RES=residual is not None, ROWS=rows_per_prog, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    normed = out.view(x.shape)
    return normed, (res_out.view(x.shape) if residual is not None else None)


if HAS_TRITON:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, r_ptr, w_ptr, out_ptr, res_out_ptr,
        n_rows, n_cols, stride_x, stride_r, stride_o, stride_ro, eps,
        HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
        cols = tl.arange(0, BLOCK)  # (BLOCK,)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)  # (ROWS, BLOCK)
        rows64 = rows.to(tl.int64)[:, None]
        x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0)
        if HAS_RES:
            r = tl.load(r_ptr + rows64 * stride_r + cols[None, :], mask=mask, other=0.0)
            # Round the sum to the input dtype, as `x + h` in the model does before the norm.
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            tl.store(res_out_ptr + rows64 * stride_ro + cols[None, :], x, mask=mask)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / n_cols + eps)  # (ROWS,)
        # Cast to the input dtype before the weight multiply, as rms_norm_ref does.
        y = (xf * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows64 * stride_o + cols[None, :], y * w[None, :], mask=mask)
