"""Top-k mixture of SwiGLU experts over a flat batch of tokens.

`moe_ref` loops over experts with one weight tensor per expert (the checkpoints' layout: the model's
reference path). `fused_moe` takes the experts stacked, `w13 (experts, 2 * inter, hidden)`
(gate rows then up rows) and `w2 (experts, hidden, inter)`, and runs every token of a step through
two grouped matmuls (`torch._grouped_mm`) over the (token, expert) pairs sorted by expert: no
Python loop over experts and no host sync, so it can sit inside a CUDA graph.

Expert parallel: with `first_expert`, the stacked weights hold experts `[first_expert,
first_expert + n)` of the router's `E`; tokens are routed over all `E` and only the pairs routed to
the held experts contribute (the others add zero), so summing every rank's output gives the whole
block's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jamba_runtime.kernels.backend import use_triton

HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


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
    first_expert: int = 0,
) -> torch.Tensor:
    """`x (tokens, hidden)` -> `(tokens, hidden)`; expert `first_expert + i` has weights
    `gate_proj[i] (inter, hidden)`, `up_proj[i] (inter, hidden)`, `down_proj[i] (hidden, inter)`;
    pairs routed to experts not in the lists add nothing. A loop over experts, not tokens."""
    weights, experts = route_ref(x, router_weight, top_k)
    out = torch.zeros_like(x)
    held = len(gate_proj) if hasattr(gate_proj, "__len__") else None  # lazy per-expert views may have none
    for e in torch.unique(experts).tolist():
        i = e - first_expert
        if i < 0 or (held is not None and i >= held):
            continue  # another rank's expert
        token_idx, k_idx = torch.where(experts == e)
        h = x[token_idx]
        h = F.linear(F.silu(F.linear(h, gate_proj[i])) * F.linear(h, up_proj[i]), down_proj[i])
        out.index_add_(0, token_idx, (h * weights[token_idx, k_idx, None]).to(out.dtype))
    return out


def stack_expert_weights(
    gate_proj: list[torch.Tensor], up_proj: list[torch.Tensor], down_proj: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert weights -> `(w13 (experts, 2 * inter, hidden), w2 (experts, hidden, inter))`.
    A copy: a model that keeps only the stacked form holds the expert weights once."""
    w13 = torch.stack([torch.cat([g, u], dim=0) for g, u in zip(gate_proj, up_proj, strict=True)])
    return w13, torch.stack(list(down_proj))


def fused_moe_ref(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    first_expert: int = 0,
) -> torch.Tensor:
    """`fused_moe`'s contract through `moe_ref` (per-expert views of the stacked weights)."""
    inter = w2.shape[2]
    return moe_ref(
        x, router_weight, list(w13[:, :inter]), list(w13[:, inter:]), list(w2), top_k, first_expert
    )


def fused_moe(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    first_expert: int = 0,
) -> torch.Tensor:
    """Route and run all tokens through their top-k experts in two grouped matmuls.

    Args:
        x: `(tokens, hidden)`.
        router_weight: `(all experts, hidden)`.
        w13: `(experts, 2 * inter, hidden)`: rows `:inter` the gate projection, `inter:` the up one.
        w2: `(experts, hidden, inter)`: the down projection.
        top_k: experts per token (weights are softmax probabilities, not renormalised).
        first_expert: the router's number of `w13[0]` (expert parallel); pairs routed outside
            `[first_expert, first_expert + experts)` add zero. 0 with all experts: the whole block.

    Returns:
        `(tokens, hidden)` in `x.dtype`. CPU, backend `reference`, non-bf16 on CUDA, or a torch
        without `_grouped_mm`: `fused_moe_ref`.
    """
    experts, hidden = w13.shape[0], x.shape[1]
    inter = w2.shape[2]
    assert w13.shape == (experts, 2 * inter, hidden), f"w13 {tuple(w13.shape)}"
    assert w2.shape == (experts, hidden, inter), f"w2 {tuple(w2.shape)}"
    assert 0 <= first_expert and first_expert + experts <= router_weight.shape[0], (
        "experts outside the router's"
    )
    # On CUDA, _grouped_mm takes bf16 only (sm80+); CPU builds accept any float dtype.
    grouped = HAS_GROUPED_MM and (x.dtype == torch.bfloat16 or not x.is_cuda)
    if not (use_triton(x) and grouped):
        return fused_moe_ref(x, router_weight, w13, w2, top_k, first_expert)
    return grouped_experts(x, *route_ref(x, router_weight, top_k), w13, w2, first_expert)


def grouped_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    chosen: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    first_expert: int = 0,
) -> torch.Tensor:
    """`fused_moe`'s two grouped matmuls on routed tokens: `weights` and `chosen` `(tokens,
    top_k)` from `route_ref`. Needs `torch._grouped_mm` (bf16 on CUDA; any float on CPU)."""
    experts, inter = w13.shape[0], w2.shape[2]
    tokens, top_k = chosen.shape
    hidden = x.shape[1]
    local = chosen.reshape(-1) - first_expert  # (tokens * top_k,) held expert of each (token, k) pair
    held = (local >= 0) & (local < experts)
    # Pairs for other ranks' experts sort last, past every held expert's rows, and are zeroed.
    flat = torch.where(held, local, experts)
    order = torch.argsort(flat, stable=True)  # pairs grouped by expert
    # Counts by scatter, not bincount: bincount sizes its output from the data (a host sync).
    counts = torch.zeros(experts + 1, dtype=torch.int32, device=x.device)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts[:experts], 0, dtype=torch.int32)  # (experts,) end of each expert's rows
    xs = x[order // top_k]  # (tokens * top_k, hidden)
    h = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)  # (tokens * top_k, 2 * inter)
    a = F.silu(h[:, :inter]) * h[:, inter:]
    y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs)  # (tokens * top_k, hidden)
    # Rows past the last offset (other ranks' pairs) are not computed: masked, not multiplied.
    scale = torch.where(held, weights.reshape(-1), 0).float()[order, None]
    y = torch.where(scale != 0, y.float() * scale, 0.0)
    # Undo the sort and sum each token's top_k rows (no atomics: the result is deterministic).
    unsorted = torch.empty_like(y)
    unsorted[order] = y
    return unsorted.view(tokens, top_k, hidden).sum(1).to(x.dtype)
