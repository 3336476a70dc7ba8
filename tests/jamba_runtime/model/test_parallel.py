"""Tensor + expert parallel on CPU: 2 gloo ranks in spawned processes against one process.

Measured (tiny model, float32, prompts of 17, 5 and 32 tokens as one packed prefill): the largest
difference between 2-rank and single-process logits is about 4e-6 (logits up to 4.2), float32
summation order only; the same with int8 experts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jamba_runtime import load_model
from jamba_runtime.engine.memory_plan import plan_memory
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.model.sharding import (
    COLUMN_XZ,
    EXPERT,
    REPLICATED,
    ROW,
    check_tensor_parallel,
    local_experts,
    shard_rule,
    shard_tensor,
)
from jamba_runtime.model.tp_layers import TensorParallelGroup
from jamba_runtime.model.tp_model import prefill, shard_model
from jamba_runtime.model.tp_prefill import PrefillResult, spawn_prefill

QUANTIZATIONS = (None, "experts_int8")
PROMPT_LENS = (17, 5, 32)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, 1024, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir: Path, prompts: list[list[int]]) -> dict[str | None, PrefillResult]:
    results = spawn_prefill(tiny_model_dir, prompts, world_size=2, quantizations=QUANTIZATIONS, num_threads=1)
    return dict(zip(QUANTIZATIONS, results, strict=True))


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_two_gloo_ranks_equal_one_process(
    tiny_model_dir: Path, prompts: list[list[int]], two_ranks: dict, quantization: str | None
) -> None:
    single = prefill(load_model(tiny_model_dir, quantization=quantization), prompts)
    result = two_ranks[quantization]
    assert [x.shape for x in result.logits] == [(n, 1024) for n in PROMPT_LENS]
    for got, want in zip(result.logits, single, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_one_all_reduce_per_row_parallel_layer_and_per_moe_block(
    tiny_model_dir: Path, two_ranks: dict
) -> None:
    cfg = load_model(tiny_model_dir).config
    # attention: o_proj; Mamba: x_proj + out_proj; every block's MLP or MoE: one.
    expected = len(cfg.attention_layers) + 2 * len(cfg.mamba_layers) + cfg.num_hidden_layers
    assert all(r.num_all_reduces == expected for r in two_ranks.values())


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_rank_memory_is_what_the_plan_says(
    tiny_model_dir: Path, two_ranks: dict, quantization: str | None
) -> None:
    cfg = load_model(tiny_model_dir).config
    plan = plan_memory(cfg, "float32", quantization, tensor_parallel_size=2)
    assert two_ranks[quantization].shard_parameter_bytes == plan.weights_bytes
    assert plan.weights_bytes < plan_memory(cfg, "float32", quantization).weights_bytes * 0.7


def test_prefill_cache_equals_the_plain_forward(tiny_model_dir: Path, prompts: list[list[int]]) -> None:
    model = load_model(tiny_model_dir)
    for got, ids in zip(prefill(model, prompts), prompts, strict=True):
        torch.testing.assert_close(got, model(torch.tensor([ids]))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_loading_a_shard_equals_sharding_the_loaded_model(
    tiny_model_dir: Path, quantization: str | None
) -> None:
    # No collective runs while loading or sharding, so both ranks' shards can be made here.
    for rank in range(2):
        read = load_model(tiny_model_dir, quantization=quantization, tp=TensorParallelGroup(rank, 2))
        cut = shard_model(load_model(tiny_model_dir, quantization=quantization), TensorParallelGroup(rank, 2))
        got, want = dict(read.named_parameters()), dict(cut.named_parameters())
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in got)
        experts = {k.split(".experts.")[1].split(".")[0] for k in got if ".experts." in k}
        assert experts == {str(e) for e in local_experts(rank, 4, 2)}


def test_shards_put_back_together_are_the_tensor() -> None:
    w = torch.arange(8 * 6, dtype=torch.float32).view(8, 6)
    assert shard_rule("model.layers.0.mamba.in_proj.weight") == COLUMN_XZ
    parts = [shard_tensor("model.layers.0.mamba.in_proj.weight", w, r, 2, 4) for r in range(2)]
    x = torch.cat([p[:2] for p in parts])  # each rank holds [its x rows; its z rows]
    z = torch.cat([p[2:] for p in parts])
    assert torch.equal(torch.cat([x, z]), w)
    assert shard_rule("model.layers.0.mamba.x_proj.weight") == ROW
    cols = [shard_tensor("model.layers.0.mamba.x_proj.weight", w, r, 2, 4) for r in range(2)]
    assert torch.equal(torch.cat(cols, dim=1), w)
    assert shard_rule("model.layers.3.feed_forward.experts.2.up_proj.weight_scale") == EXPERT
    assert shard_rule("model.layers.3.feed_forward.router.weight") == REPLICATED
    assert shard_rule("model.layers.0.mamba.dt_layernorm.weight") == REPLICATED
    assert [list(local_experts(r, 16, 3)) for r in range(3)] == [
        list(range(0, 6)),
        list(range(6, 11)),
        list(range(11, 16)),
    ]


def test_sizes_that_do_not_divide_are_refused(tiny_model_dir: Path) -> None:
    cfg = load_model(tiny_model_dir).config
    check_tensor_parallel(cfg, 2)
    with pytest.raises(InvalidRequestError, match="num_key_value_heads=2: use one of \\[1, 2\\]"):
        check_tensor_parallel(cfg, 4)
