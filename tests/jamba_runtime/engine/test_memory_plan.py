"""Memory planning: exact on the tiny model (against the bytes really allocated), and the verdicts
on the published shapes (configs in shared/models, beside the repository)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, load_model
from jamba_runtime.cache.paged import block_bytes, slot_bytes
from jamba_runtime.config import JambaConfig
from jamba_runtime.engine.memory_plan import plan_memory
from jamba_runtime.errors import InsufficientMemoryError, InvalidRequestError
from jamba_runtime.model.quantization import parameter_bytes
from jamba_runtime.model.sharding import shard_tensor

SHARED_MODELS = Path(__file__).resolve().parents[4] / "shared" / "models"
GIB = 1 << 30
H100 = 80 * GIB  # nominal; the plan uses gpu_memory_utilization (0.9) of it
needs_shapes = pytest.mark.skipif(
    not (SHARED_MODELS / "jamba-1.5-mini").is_dir(), reason="shared model configs not beside the repo"
)


@pytest.fixture(scope="module")
def mini() -> JambaConfig:
    return JambaConfig.from_file(SHARED_MODELS / "jamba-1.5-mini")


@pytest.mark.parametrize("quantization", [None, "experts_int8"])
def test_tiny_plan_counts_the_bytes_actually_allocated(
    tiny_model_dir: Path, quantization: str | None
) -> None:
    model = load_model(tiny_model_dir, quantization=quantization)
    cfg = model.config
    plan = plan_memory(cfg, "float32", quantization)
    assert plan.weights_bytes == parameter_bytes(model)
    assert plan.expert_weights_bytes == parameter_bytes(model, expert_only=True)
    assert plan.kv_bytes_per_token == block_bytes(cfg, 1, torch.float32)
    assert plan.kv_bytes_per_token == plan.kv_bytes_per_token_per_layer * len(cfg.attention_layers)
    assert plan.mamba_slot_bytes == slot_bytes(cfg, torch.float32)
    # No device limit on CPU: always fits, and check() is quiet.
    assert plan.fits and plan.budget_bytes is None and plan.longest_context is None
    plan.check(cfg)


def test_tensor_parallel_plan_equals_rank0_shards(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    cfg = model.config
    plan = plan_memory(cfg, "float32", tensor_parallel_size=2)
    rank0 = [shard_tensor(n, p, 0, 2, cfg.num_experts) for n, p in model.named_parameters()]
    assert plan.weights_bytes == sum(t.numel() * t.element_size() for t in rank0 if t is not None)
    single = plan_memory(cfg, "float32")
    assert plan.kv_bytes_per_token * 2 == single.kv_bytes_per_token
    assert plan.mamba_slot_bytes * 2 == single.mamba_slot_bytes
    with pytest.raises(InvalidRequestError, match="num_attention_heads=4"):
        plan_memory(cfg, "float32", tensor_parallel_size=3)


def test_engine_logs_its_plan(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jamba_runtime.engine"):
        LLM(model=tiny_model_dir, quantization="experts_int8")
    text = caplog.text
    assert "memory plan per GPU" in text and "quantization experts_int8" in text
    assert "Mamba state slots" in text and "not limited (CPU)" in text


@needs_shapes
def test_mini_bf16_is_refused_on_one_80gb_gpu_naming_the_options(mini: JambaConfig) -> None:
    plan = plan_memory(mini, "bfloat16", device_memory_bytes=H100)
    assert not plan.fits and plan.kv_tokens == 0
    assert 103.0e9 < plan.weights_bytes < 103.3e9  # 51.57 B parameters, README: 103.1 GB
    with pytest.raises(InsufficientMemoryError) as err:
        plan.check(mini)
    message = str(err.value)
    assert "weights alone take 96.1 GiB" in message and "72.0 GiB" in message
    assert "quantization='experts_int8'" in message and "fits" in message
    assert "tensor_parallel_size=2" in message
    assert err.value.http_status == 400 and err.value.code == "insufficient_memory"


@needs_shapes
def test_mini_experts_int8_fits_one_80gb_gpu_at_256k(mini: JambaConfig) -> None:
    plan = plan_memory(mini, "bfloat16", "experts_int8", device_memory_bytes=H100)
    plan.check(mini)
    assert 57.9e9 < plan.weights_bytes < 58.2e9
    assert plan.kv_bytes_per_token * 1024 == 16 * (1 << 20)  # 16 MiB per 1K tokens (4 layers)
    assert plan.mamba_slot_bytes == 28 * 8192 * (3 * 2 + 16 * 4)  # 15.3 MiB: conv bf16 + SSM fp32
    assert plan.longest_context == 262_144
    assert plan.kv_tokens is not None and plan.kv_tokens > 900_000  # ~0.97 M tokens of KV room


@needs_shapes
def test_context_that_does_not_fit_names_the_longest_that_does(mini: JambaConfig) -> None:
    plan = plan_memory(mini, "bfloat16", "experts_int8", device_memory_bytes=64 * GIB)
    assert not plan.fits and plan.weights_bytes < plan.budget_bytes  # weights fit, 256K of KV does not
    longest = plan.longest_context
    assert longest is not None and 0 < longest < 262_144
    with pytest.raises(InsufficientMemoryError, match=f"max_model_len <= {longest:,}") as err:
        plan.check(mini)
    assert "tensor_parallel_size=2" in str(err.value)
    plan_memory(mini, "bfloat16", "experts_int8", max_model_len=longest, device_memory_bytes=64 * GIB).check(
        mini
    )
    with pytest.raises(InsufficientMemoryError):
        plan_memory(
            mini, "bfloat16", "experts_int8", max_model_len=longest + 1, device_memory_bytes=64 * GIB
        ).check(mini)


@needs_shapes
def test_mini_bf16_tensor_parallel_2_fits(mini: JambaConfig) -> None:
    plan = plan_memory(mini, "bfloat16", tensor_parallel_size=2, device_memory_bytes=H100)
    plan.check(mini)
    single = plan_memory(mini, "bfloat16")
    # Experts split evenly; attention, Mamba and dense MLP halve; embeddings, LM head and norms stay.
    assert single.weights_bytes / 2 < plan.weights_bytes < single.weights_bytes / 2 + 1.1e9
    assert plan.kv_bytes_per_token == 8192


@needs_shapes
def test_large_needs_eight_gpus_with_int8() -> None:
    large = JambaConfig.from_file(SHARED_MODELS / "jamba-1.5-large")
    assert not plan_memory(
        large, "bfloat16", "experts_int8", tensor_parallel_size=4, device_memory_bytes=H100
    ).fits
    plan = plan_memory(large, "bfloat16", "experts_int8", tensor_parallel_size=8, device_memory_bytes=H100)
    plan.check(large)
