"""Causal grouped-query attention of new queries over each sequence's cached + new keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
