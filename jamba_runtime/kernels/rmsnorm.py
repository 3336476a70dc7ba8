"""RMSNorm."""

from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x (..., hidden)` normalised in float32, cast back to `x.dtype`, then scaled by `weight (hidden,)`.

    The cast happens before the weight multiply, as in transformers' `JambaRMSNorm`, so bf16
    outputs round the same way.
    """
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)
