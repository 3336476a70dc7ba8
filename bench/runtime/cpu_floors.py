"""The hardware floors of `bench.runtime.cpu`'s rows: the matmul parameters a token uses, and from
them and the measured machine (`bench.common.cpu_hardware.measure_hardware`) the compute floor of
prefill and the bytes-read floor of decode, in tokens/s."""

from __future__ import annotations

import torch

from jamba_runtime.config import JambaConfig


def param_counts(model: torch.nn.Module, config: JambaConfig) -> dict[str, int]:
    """Total parameters, one expert's, the embedding's, and the matmul parameters a token uses."""
    total = sum(p.numel() for p in model.parameters())
    embed = config.vocab_size * config.hidden_size
    expert = 3 * config.hidden_size * config.intermediate_size
    n_moe = len(config.moe_layers)
    all_experts = n_moe * config.num_experts * expert
    # Matmul weights only: no norms, A_log, D, conv taps or biases (elementwise work, not FLOPs that
    # the matmul rate bounds); the embedding is a gather.
    small = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "conv1d" in name or name.endswith("A_log"):
            small += p.numel()
    if config.tie_word_embeddings:
        dense_matmul = total - small - all_experts
    else:
        dense_matmul = total - small - all_experts - embed
    return {
        "total": total,
        "embedding": embed,
        "per_expert": expert,
        "moe_layers": n_moe,
        "dense_matmul": dense_matmul,
        "active_matmul_per_token": dense_matmul + n_moe * config.num_experts_per_tok * expert,
    }


def prefill_bound(
    config: JambaConfig, counts: dict[str, int], prompt_len: int, hw: dict[str, float]
) -> float:
    attn = (
        len(config.attention_layers)
        * 2
        * 2
        * config.num_attention_heads
        * config.head_dim
        * (prompt_len + 1)
        / 2
    )
    flops_per_token = 2 * counts["active_matmul_per_token"] + attn
    return hw["matmul_gflops"] * 1e9 / flops_per_token


def decode_bound(
    config: JambaConfig, counts: dict[str, int], batch: int, context: int, hw: dict[str, float]
) -> float:
    e, k = config.num_experts, config.num_experts_per_tok
    # Distinct experts a step reads when `batch` tokens route independently and uniformly.
    distinct = e * (1 - (1 - k / e) ** batch)
    # Every weight is read once a step except the embedding (one row per token; it is the LM head
    # too when tied) and the experts no token routed to.
    weights = counts["total"] - counts["moe_layers"] * (e - distinct) * counts["per_expert"]
    if not config.tie_word_embeddings:
        weights -= counts["embedding"]
    kv = len(config.attention_layers) * 2 * config.num_key_value_heads * config.head_dim * context * batch
    # Mamba state is read and written every step.
    state = (
        2
        * len(config.mamba_layers)
        * config.mamba_d_inner
        * (config.mamba_d_state + config.mamba_d_conv - 1)
        * batch
    )
    step_bytes = 4 * (weights + kv + state)
    return batch * hw["read_bandwidth_gb_s"] * 1e9 / step_bytes
