"""Top-k mixture of SwiGLU experts over a flat batch of tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route_ref(x: torch.Tensor, router_weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over router logits, then top-k. The chosen weights are *not* renormalised (Jamba).

    Returns `(weights (tokens, top_k) in x.dtype, expert ids (tokens, top_k))`.
    """
    probs = torch.softmax(F.linear(x, router_weight), dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    return weights.to(x.dtype), experts


def moe_ref(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    gate_proj: list[torch.Tensor],
    up_proj: list[torch.Tensor],
    down_proj: list[torch.Tensor],
    top_k: int,
) -> torch.Tensor:
    """`x (tokens, hidden)` -> `(tokens, hidden)`; expert `e` has weights `gate_proj[e] (inter, hidden)`,
    `up_proj[e] (inter, hidden)`, `down_proj[e] (hidden, inter)`. A loop over experts, not tokens."""
    weights, experts = route_ref(x, router_weight, top_k)
    out = torch.zeros_like(x)
    for e in torch.unique(experts).tolist():
        token_idx, k_idx = torch.where(experts == e)
        h = x[token_idx]
        h = F.linear(F.silu(F.linear(h, gate_proj[e])) * F.linear(h, up_proj[e]), down_proj[e])
        out.index_add_(0, token_idx, (h * weights[token_idx, k_idx, None]).to(out.dtype))
    return out
