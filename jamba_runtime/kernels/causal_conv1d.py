"""Causal depthwise conv1d with a carried state (the Mamba conv), followed by SiLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
