"""The ~100M-parameter Jamba-like shape the CPU runtime benches run beside the tiny test model."""

from __future__ import annotations

from typing import Any

# A Jamba-like ~100M shape: Jamba's 1:7 attention:Mamba ratio (one attention layer in 8), MoE on
# every other layer with top-2 routing, Mamba d_state 16 / d_conv 4 / expand 2, grouped-query
# attention. Scaled down: 8 experts instead of 16, intermediate 2x hidden instead of 3.5x, and a
# 32k vocab (65k would put half the parameters in the embedding and LM head).
SHAPE_100M: dict[str, Any] = {
    "model_type": "jamba",
    "architectures": ["JambaForCausalLM"],
    "vocab_size": 32768,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "attn_layer_period": 8,
    "attn_layer_offset": 4,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 32,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
