"""Our model against transformers' JambaForCausalLM on the same saved checkpoint (float32)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from jamba_runtime import ForwardBatch, HybridCache, load_model

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

# Each config varies what the layer map and the mixers depend on.
RANDOM_CONFIGS = {
    "moe_gqa4_attn1of4": dict(
        num_hidden_layers=8,
        attn_layer_period=4,
        attn_layer_offset=1,
        num_experts=4,
        num_experts_per_tok=2,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_attention_heads=8,
        num_key_value_heads=2,
        mamba_d_state=16,
        mamba_dt_rank=4,
        mamba_conv_bias=True,
        hidden_size=64,
    ),
    "dense_mha_attn1of3": dict(
        num_hidden_layers=6,
        attn_layer_period=3,
        attn_layer_offset=2,
        num_experts=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        mamba_d_state=8,
        mamba_dt_rank=6,
        mamba_conv_bias=False,
        hidden_size=48,
        mamba_d_conv=3,
    ),
    "moe_top1_mqa": dict(
        num_hidden_layers=5,
        attn_layer_period=2,
        attn_layer_offset=0,
        num_experts=3,
        num_experts_per_tok=1,
        expert_layer_period=3,
        expert_layer_offset=2,
        num_attention_heads=6,
        num_key_value_heads=1,
        mamba_d_state=4,
        mamba_dt_rank=3,
        mamba_conv_bias=True,
        hidden_size=36,
        mamba_expand=3,
    ),
    "moe_all_layers_auto_rank": dict(
        num_hidden_layers=4,
        attn_layer_period=4,
        attn_layer_offset=3,
        num_experts=8,
        num_experts_per_tok=3,
        expert_layer_period=1,
        expert_layer_offset=0,
        num_attention_heads=2,
        num_key_value_heads=1,
        mamba_d_state=12,
        mamba_dt_rank="auto",
        mamba_conv_bias=False,
        hidden_size=40,
        mamba_proj_bias=True,
    ),
}


def save_hf_random(directory: Path, seed: int, **overrides: object):  # noqa: ANN201
    """A transformers Jamba with perturbed random weights, saved to `directory` and returned."""
    torch.manual_seed(seed)
    cfg = transformers.JambaConfig(vocab_size=211, intermediate_size=56, **overrides)
    model = transformers.JambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # the default init is near zero; spread the logits out
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    return model


def assert_close_logits(ours: torch.Tensor, ref: torch.Tensor) -> float:
    err = (ours.float() - ref.float()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 1e-4 * scale, f"max abs diff {err:.3e} > 1e-4 * {scale:.3e}"
    return err / scale


@pytest.mark.parametrize("name", sorted(RANDOM_CONFIGS))
def test_logits_match_transformers(name: str, tmp_path: Path) -> None:
    ref_model = save_hf_random(tmp_path, seed=len(name), **RANDOM_CONFIGS[name])
    ours = load_model(tmp_path)
    ids = torch.randint(0, 211, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(ids).logits
    assert_close_logits(ours(ids), ref)


def test_tiny_model_matches_transformers(tiny_model_dir: Path, hf_tiny) -> None:  # noqa: ANN001
    ours = load_model(tiny_model_dir)
    ids = torch.randint(0, ours.config.vocab_size, (3, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf_tiny(ids).logits
    assert_close_logits(ours(ids), ref)


def test_cached_decode_equals_full_forward_for_unequal_prompts(tmp_path: Path) -> None:
    """Prefill prompts of unequal lengths packed together, then feed the rest token by token
    (one sequence two at a time): logits at every position equal one full forward."""
    ref_model = save_hf_random(tmp_path, seed=7, **RANDOM_CONFIGS["moe_gqa4_attn1of4"])
    ours = load_model(tmp_path)
    total = [30, 21, 9]
    ids = torch.randint(0, 211, (3, max(total)), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = ref_model(ids).logits
    cache = HybridCache(ours.config, num_slots=3, capacity=max(total))
    done = [4, 13, 1]
    batch = ForwardBatch.build(done, [0, 0, 0])
    logits = ours.forward_packed(torch.cat([ids[i, : done[i]] for i in range(3)]), batch, cache)
    for i in range(3):
        assert_close_logits(logits[batch.cu_seqlens[i] : batch.cu_seqlens[i + 1]], full[i, : done[i]])
    while any(d < t for d, t in zip(done, total, strict=True)):
        active = [i for i in range(3) if done[i] < total[i]]
        step = [min(2 if i == 1 else 1, total[i] - done[i]) for i in active]
        batch = ForwardBatch.build(step, [done[i] for i in active], slots=active)
        tokens = torch.cat([ids[i, done[i] : done[i] + n] for i, n in zip(active, step, strict=True)])
        logits = ours.forward_packed(tokens, batch, cache)
        for j, (i, n) in enumerate(zip(active, step, strict=True)):
            assert_close_logits(
                logits[batch.cu_seqlens[j] : batch.cu_seqlens[j + 1]], full[i, done[i] : done[i] + n]
            )
            done[i] += n


def test_bfloat16_runs_close_to_float32(tiny_model_dir: Path) -> None:
    ids = torch.randint(0, 1024, (1, 24), generator=torch.Generator().manual_seed(4))
    ref = load_model(tiny_model_dir)(ids)
    bf16 = load_model(tiny_model_dir, dtype="bfloat16")(ids)
    assert bf16.dtype == torch.bfloat16
    assert not torch.isnan(bf16).any()
    rel = ((bf16.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel
