"""Deterministic random Jamba checkpoints: the tiny model for tests and the offline demo, and
random weights of any shape for speed and memory work (which do not depend on weight values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from jamba_runtime.config import JambaConfig
from jamba_runtime.model.dummy_weights import init_tensor
from jamba_runtime.model.modeling import empty_model
from jamba_runtime.tokenizer.tiny import tiny_model_token_ids, write_tiny_tokenizer

TINY_VOCAB_SIZE = 1024

# 8 layers: attention at 2 and 6, Mamba elsewhere; MoE (4 experts, top-2) on odd layers.
TINY_CONFIG: dict[str, Any] = {
    "model_type": "jamba",
    "architectures": ["JambaForCausalLM"],
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "attn_layer_period": 4,
    "attn_layer_offset": 2,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 4,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def random_state_dict(
    config: JambaConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights with sensible scales (activations stay O(1), logits spread out), from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {name: tuple(p.shape) for name, p in empty_model(config).named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        out[name] = _init(name, shape, config, gen).to(dtype)
    return out


def _init(name: str, shape: tuple[int, ...], config: JambaConfig, gen: torch.Generator) -> torch.Tensor:
    return init_tensor(name, shape, config, gen)  # float32 on the CPU, the dummy format's scales


def write_random_checkpoint(
    directory: str | Path, config: JambaConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write `config.json` and `model.safetensors` with random weights into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = random_state_dict(config, seed=seed, dtype=dtype)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    # Write to a temporary name first so an interrupted run never leaves a half-written checkpoint.
    tmp = directory / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    config.save(directory)
    tmp.replace(directory / "model.safetensors")
    return directory


def make_tiny_model(directory: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write the tiny random Jamba (weights, config, tokenizer, chat template) into `directory`.

    The same `seed` always writes the same files. Its weights are random: its text is gibberish,
    and it exists to test the runtime and run the stack offline.

    Example:
        >>> make_tiny_model("models/tiny")
        >>> LLM(model="models/tiny").generate("Hello")
    """
    directory = Path(directory)
    raw = {**TINY_CONFIG, **tiny_model_token_ids(), **overrides}
    config = JambaConfig.from_dict(raw, source="tiny config")
    write_tiny_tokenizer(directory, vocab_size=config.vocab_size)
    write_random_checkpoint(directory, config, seed=seed)
    return directory
