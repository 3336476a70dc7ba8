"""Tensor + expert parallel on Jamba-1.5-Large's layer pattern at tiny widths: 2 gloo ranks in
spawned processes against one process (as `test_parallel.py` does for the test model).

Large's pattern (shared/models/jamba-1.5-large/config.json): attention every 8th layer from 4, MoE
every 2nd layer from 1, 16 experts, top-2, 8 query heads per KV head. Sixteen layers are two of
Large's eight-layer blocks, so both attention layers, 8 MoE layers of 16 experts (8 on each rank)
and the dense MLPs between them all run split. The same keys are `tiny-large` in
`bench/scale/shapes.py` (its test checks them against the shared Large config).

Measured (float32, prompts of 19, 4 and 33 tokens as one packed prefill): the largest difference
between 2-rank and single-process logits is 6.2e-6 (6.8e-6 with int8 experts), logits up to 4.3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jamba_runtime import load_model
from jamba_runtime.engine.memory_plan import plan_memory
from jamba_runtime.model.sharding import local_experts
from jamba_runtime.model.tp_layers import TensorParallelGroup
from jamba_runtime.model.tp_model import prefill
from jamba_runtime.model.tp_prefill import PrefillResult, spawn_prefill
from jamba_runtime.tiny import make_tiny_model

LARGE_PATTERN = {
    "attn_layer_period": 8,
    "attn_layer_offset": 4,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "num_experts": 16,
    "num_experts_per_tok": 2,
}
TINY_WIDTHS = {
    "num_hidden_layers": 16,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "mamba_dt_rank": 4,
}
QUANTIZATIONS = (None, "experts_int8")
PROMPT_LENS = (19, 4, 33)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(
        tmp_path_factory.mktemp("tiny-large") / "m", seed=1, **LARGE_PATTERN, **TINY_WIDTHS
    )


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, 1024, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def two_ranks(model_dir: Path, prompts: list[list[int]]) -> dict[str | None, PrefillResult]:
    results = spawn_prefill(model_dir, prompts, world_size=2, quantizations=QUANTIZATIONS, num_threads=1)
    return dict(zip(QUANTIZATIONS, results, strict=True))


def test_the_model_has_large_s_layer_pattern(model_dir: Path) -> None:
    cfg = load_model(model_dir).config
    assert cfg.attention_layers == [4, 12]
    assert cfg.moe_layers == list(range(1, 16, 2))
    assert cfg.num_attention_heads // cfg.num_key_value_heads == 64 // 8


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_two_gloo_ranks_equal_one_process(
    model_dir: Path, prompts: list[list[int]], two_ranks: dict, quantization: str | None
) -> None:
    single = prefill(load_model(model_dir, quantization=quantization), prompts)
    result = two_ranks[quantization]
    assert [x.shape for x in result.logits] == [(n, 1024) for n in PROMPT_LENS]
    for got, want in zip(result.logits, single, strict=True):
        assert want.abs().max() > 0.1  # logits that carry signal, so a match means something
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_each_rank_holds_half_the_experts_and_what_the_plan_says(
    model_dir: Path, two_ranks: dict, quantization: str | None
) -> None:
    cfg = load_model(model_dir).config
    plan = plan_memory(cfg, "float32", quantization, tensor_parallel_size=2)
    assert two_ranks[quantization].shard_parameter_bytes == plan.weights_bytes
    shard = load_model(model_dir, quantization=quantization, tp=TensorParallelGroup(1, 2))
    layer = cfg.moe_layers[0]
    names = [n for n, _ in shard.named_parameters() if f"layers.{layer}." in n and ".experts." in n]
    held = {int(n.split(".experts.")[1].split(".")[0]) for n in names}
    assert held == set(local_experts(1, 16, 2)) == set(range(8, 16))
