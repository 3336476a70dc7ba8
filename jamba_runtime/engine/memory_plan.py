"""Memory planning: what a model, dtype, quantization, context and GPU count need per GPU.

`plan_memory` counts, per GPU (the busiest tensor-parallel rank):
- weights: every parameter of the model built on the meta device, in the dtype the loader gives
  it (A_log and D in float32; int8 experts plus float32 scales under `experts_int8`), split by the
  same rules as tensor parallel (`model/sharding.py`);
- KV cache: bytes per token for all attention layers (keys + values, model dtype, this rank's KV
  heads); the plan needs room for one sequence of `max_model_len` tokens, and whatever is left of
  the budget becomes more KV blocks;
- Mamba state slots: conv window (model dtype) + SSM state (`ssm_dtype`, float32 by default) for
  every Mamba layer, one slot per running sequence plus the snapshot slots;
- activation workspace: the transient tensors of one step of `max_num_batched_tokens` tokens (see
  `activation_bytes`), plus a fixed reserve for the CUDA context and allocator slack.

`MemoryPlan.check()` raises `InsufficientMemoryError` naming the shortfall and, computed for this
very model, the settings that would fit: `experts_int8`, more GPUs, a shorter context.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from jamba_runtime.cache.paged import resolve_kv_cache_dtype, resolve_ssm_dtype
from jamba_runtime.config import JambaConfig
from jamba_runtime.errors import InsufficientMemoryError, InvalidRequestError
from jamba_runtime.model.loader import param_dtype, resolve_dtype
from jamba_runtime.model.modeling import empty_model
from jamba_runtime.model.quantization import (
    EXPERTS_INT8,
    is_expert_weight,
    model_quantization,
    resolve_quantization,
)
from jamba_runtime.model.sharding import check_tensor_parallel, local_numel

if TYPE_CHECKING:
    from jamba_runtime.engine.config import EngineConfig
    from jamba_runtime.model.modeling import JambaForCausalLM

_GIB = 1 << 30
# CUDA context, cuBLAS/Triton workspaces and allocator fragmentation, outside any tensor we size.
CUDA_RESERVE_BYTES = 1 * _GIB
_MAX_TP = 8  # one host


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU for one setting. Sizes are of the busiest rank under tensor parallel.

    `device_memory_bytes` is None when there is no device limit (CPU): the plan then always fits.
    """

    dtype: torch.dtype
    quantization: str | None
    tensor_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    num_slots: int
    weights_bytes: int
    expert_weights_bytes: int
    kv_bytes_per_token: int  # all attention layers, this rank's KV heads
    kv_bytes_per_token_per_layer: int
    mamba_slot_bytes: int  # one slot, all Mamba layers
    activation_bytes: int
    reserve_bytes: int
    device_memory_bytes: int | None
    gpu_memory_utilization: float
    max_position_embeddings: int
    num_attention_layers: int

    @property
    def budget_bytes(self) -> int | None:
        """What the runtime may use of one GPU (`utilization` of its memory); None without a limit."""
        if self.device_memory_bytes is None:
            return None
        return int(self.device_memory_bytes * self.gpu_memory_utilization)

    @property
    def state_bytes(self) -> int:
        return self.num_slots * self.mamba_slot_bytes

    @property
    def fixed_bytes(self) -> int:
        """Everything but the KV cache."""
        return self.weights_bytes + self.state_bytes + self.activation_bytes + self.reserve_bytes

    @property
    def kv_bytes(self) -> int:
        """KV cache of one `max_model_len` sequence (the least the engine needs)."""
        return self.kv_bytes_per_token * self.max_model_len

    @property
    def required_bytes(self) -> int:
        return self.fixed_bytes + self.kv_bytes

    @property
    def kv_tokens(self) -> int | None:
        """KV positions the budget holds after everything else (shared by all sequences); None
        without a limit; huge for a model without attention layers."""
        if self.budget_bytes is None:
            return None
        free = max(self.budget_bytes - self.fixed_bytes, 0)
        if self.kv_bytes_per_token == 0:
            return self.max_position_embeddings if free > 0 else 0
        return free // self.kv_bytes_per_token

    @property
    def longest_context(self) -> int | None:
        """Longest single sequence that fits: min(model limit, KV positions that fit)."""
        tokens = self.kv_tokens
        return None if tokens is None else min(tokens, self.max_position_embeddings)

    @property
    def fits(self) -> bool:
        budget = self.budget_bytes
        return budget is None or self.required_bytes <= budget

    def summary(self) -> str:
        """A few lines for the start-up log."""
        gib = lambda n: f"{n / _GIB:.2f} GiB"  # noqa: E731
        quant = self.quantization or "none"
        lines = [
            f"memory plan per GPU (dtype {str(self.dtype).removeprefix('torch.')}, quantization {quant}, "
            f"tensor parallel {self.tensor_parallel_size}):",
            f"  weights            {gib(self.weights_bytes)} (experts {gib(self.expert_weights_bytes)})",
            f"  KV cache           {self.kv_bytes_per_token:,} B/token ({self.num_attention_layers} attention "
            f"layers); {gib(self.kv_bytes)} for max_model_len {self.max_model_len:,}",
            f"  Mamba state slots  {self.num_slots} x {self.mamba_slot_bytes / (1 << 20):.2f} MiB = "
            f"{gib(self.state_bytes)}",
            f"  activations        {gib(self.activation_bytes)} + reserve {gib(self.reserve_bytes)}",
            f"  total              {gib(self.required_bytes)}",
        ]
        if self.budget_bytes is None:
            lines.append("  device memory      not limited (CPU)")
        else:
            lines.append(
                f"  budget             {gib(self.budget_bytes)} ({self.gpu_memory_utilization:.2f} of "
                f"{gib(self.device_memory_bytes or 0)}); KV tokens that fit {self.kv_tokens:,}, "
                f"longest context {self.longest_context:,}; {'fits' if self.fits else 'DOES NOT FIT'}"
            )
        return "\n".join(lines)

    def check(self, config: JambaConfig | None = None) -> None:
        """Raise `InsufficientMemoryError` when the setting does not fit; return quietly otherwise.

        With `config` (the one planned), the message also names settings that would fit, each
        planned for this model."""
        if self.fits:
            return
        budget = self.budget_bytes or 0
        short = self.required_bytes - budget
        what = (
            f"the weights alone take {self.weights_bytes / _GIB:.1f} GiB"
            if self.weights_bytes > budget
            else f"weights {self.weights_bytes / _GIB:.1f} GiB + KV for max_model_len {self.max_model_len:,} "
            f"{self.kv_bytes / _GIB:.1f} GiB + state slots, activations and reserve "
            f"{(self.fixed_bytes - self.weights_bytes) / _GIB:.1f} GiB"
        )
        message = (
            f"the model does not fit: it needs {self.required_bytes / _GIB:.1f} GiB per GPU ({what}), "
            f"but one GPU offers {budget / _GIB:.1f} GiB ({self.gpu_memory_utilization:.2f} of "
            f"{(self.device_memory_bytes or 0) / _GIB:.1f} GiB), {short / _GIB:.1f} GiB short."
        )
        if config is not None:
            options = _options(self, config)
            if options:
                message += " Options: " + "; ".join(options) + "."
        raise InsufficientMemoryError(message)


def _options(plan: MemoryPlan, config: JambaConfig) -> list[str]:
    """Settings that fit, each planned: quantization, more GPUs, a shorter context, fewer sequences."""
    base = dict(
        dtype=plan.dtype,
        quantization=plan.quantization,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        num_snapshot_slots=plan.num_slots - plan.max_num_seqs,
        tensor_parallel_size=plan.tensor_parallel_size,
        device_memory_bytes=plan.device_memory_bytes,
        gpu_memory_utilization=plan.gpu_memory_utilization,
    )
    out: list[str] = []
    if plan.quantization is None:
        q = plan_memory(config, **{**base, "quantization": EXPERTS_INT8})
        verdict = "fits" if q.fits else "still short"
        out.append(
            f"quantization='experts_int8' (weights {q.weights_bytes / _GIB:.1f} GiB per GPU, {verdict}; "
            f"longest context {q.longest_context:,})"
        )
    for tp in (2, 4, 8):
        if tp <= plan.tensor_parallel_size:
            continue
        try:
            p = plan_memory(config, **{**base, "tensor_parallel_size": tp})
        except InvalidRequestError:  # a size that does not divide the model's heads is no option
            continue
        if p.fits:
            out.append(
                f"tensor_parallel_size={tp} (more GPUs: weights {p.weights_bytes / _GIB:.1f} GiB per GPU, "
                f"longest context {p.longest_context:,})"
            )
            break
    longest = plan.longest_context or 0
    if plan.weights_bytes < (plan.budget_bytes or 0) and 0 < longest < plan.max_model_len:
        out.append(f"a shorter context: max_model_len <= {longest:,}")
    elif plan.weights_bytes < (plan.budget_bytes or 0) and plan.state_bytes > plan.mamba_slot_bytes * 8:
        out.append("fewer concurrent sequences (max_num_seqs)")
    return out


def activation_bytes(
    config: JambaConfig,
    dtype: torch.dtype,
    quantization: str | None,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    tensor_parallel_size: int = 1,
) -> int:
    """Estimated peak of transient tensors in one step of `max_num_batched_tokens` tokens, per GPU.

    The largest of the layers' working sets (only one layer runs at a time), plus the residual
    stream and the logits of `max_num_seqs` sampled rows (float32, with their softmax). Assumes the
    GPU kernels (attention that reads KV blocks in place, no `(heads, q, k)` score matrix; a fused
    scan); the CPU reference paths use more. Under `experts_int8` the reference dequantizes one
    expert projection at a time (float32 then `dtype`), counted here.
    """
    b = _itemsize(dtype)
    t, tp = max_num_batched_tokens, tensor_parallel_size
    d_inner = config.mamba_d_inner // tp
    # in_proj out (2D), conv out, dt (dtype); scan output and dt in float32.
    mamba = t * d_inner * (4 * b + 8) + t * (config.mamba_dt_rank + 2 * config.mamba_d_state) * 4
    heads, kv = config.num_attention_heads // tp, max(config.num_key_value_heads // tp, 1)
    attention = t * (2 * heads + 2 * kv) * config.head_dim * b
    k, inter, hidden = config.num_experts_per_tok, config.intermediate_size, config.hidden_size
    if config.moe_layers:
        # gathered inputs, gate+up out, activation, float32 weighted output, per (token, expert) pair.
        ff = t * k * (hidden * b + 3 * inter * b + hidden * 4)
        if quantization == EXPERTS_INT8:
            ff += hidden * inter * (8 + b)
    else:
        ff = t * (3 * inter // tp) * b
    residual = 4 * t * hidden * b
    logits = 2 * max_num_seqs * config.vocab_size * 4
    return max(mamba, attention, ff) + residual + logits


@functools.lru_cache(maxsize=8)
def _parameter_shapes(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Keyed by the config's JSON (the config itself holds a dict, so it does not hash); building the
    # meta model of a 400 B shape takes about a second, and `check` plans several alternatives.
    model = empty_model(JambaConfig.from_dict(json.loads(config_json)))
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def plan_memory(
    config: JambaConfig,
    dtype: str | torch.dtype = "bfloat16",
    quantization: str | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int = 64,
    num_snapshot_slots: int = 4,
    max_num_batched_tokens: int = 2048,
    tensor_parallel_size: int = 1,
    device_memory_bytes: int | None = None,
    gpu_memory_utilization: float = 0.9,
    ssm_dtype: torch.dtype = torch.float32,
    kv_cache_dtype: torch.dtype | None = None,
) -> MemoryPlan:
    """Plan one setting. `device_memory_bytes` is one GPU's total memory (None: no limit, CPU).

    Raises `InvalidRequestError` for an unknown dtype or quantization, or a tensor-parallel size
    that does not divide the model's heads or channels. Does not raise for a setting that does not
    fit: call `.check(config)` for that.

    Example:
        >>> plan = plan_memory(JambaConfig.from_file("models/jamba-1.5-mini"), "bfloat16",
        ...                    quantization="experts_int8", device_memory_bytes=80 << 30)
        >>> plan.fits, plan.longest_context
    """
    torch_dtype = resolve_dtype(dtype)
    quant = resolve_quantization(quantization)
    check_tensor_parallel(config, tensor_parallel_size)
    tp = tensor_parallel_size
    weights = experts = 0
    for name, shape in _parameter_shapes(json.dumps(config.to_dict(), sort_keys=True)):
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        n = local_numel(name, shape, tp, config.num_experts)
        if quant == EXPERTS_INT8 and is_expert_weight(name):
            nbytes = n + 4 * (n // shape[1])  # int8 weight + one float32 scale per output row
        else:
            nbytes = n * _itemsize(param_dtype(name, torch_dtype))
        weights += nbytes
        if ".experts." in name:
            experts += nbytes
    b = _itemsize(torch_dtype)
    kv_heads = max(config.num_key_value_heads // tp, 1)
    kv_layer = 2 * kv_heads * config.head_dim * _itemsize(kv_cache_dtype or torch_dtype)
    d_inner = config.mamba_d_inner // tp
    slot = (
        len(config.mamba_layers)
        * d_inner
        * ((config.mamba_d_conv - 1) * b + config.mamba_d_state * _itemsize(ssm_dtype))
    )
    return MemoryPlan(
        dtype=torch_dtype,
        quantization=quant,
        tensor_parallel_size=tp,
        max_model_len=max_model_len or config.max_position_embeddings,
        max_num_seqs=max_num_seqs,
        num_slots=max_num_seqs + num_snapshot_slots,
        weights_bytes=weights,
        expert_weights_bytes=experts,
        kv_bytes_per_token=kv_layer * len(config.attention_layers),
        kv_bytes_per_token_per_layer=kv_layer,
        mamba_slot_bytes=slot,
        activation_bytes=activation_bytes(
            config, torch_dtype, quant, max_num_batched_tokens, max_num_seqs, tp
        ),
        reserve_bytes=CUDA_RESERVE_BYTES if device_memory_bytes is not None else 0,
        device_memory_bytes=device_memory_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        max_position_embeddings=config.max_position_embeddings,
        num_attention_layers=len(config.attention_layers),
    )


def engine_memory_plan(
    model: JambaForCausalLM, engine_config: EngineConfig, max_model_len: int, tensor_parallel_size: int = 1
) -> MemoryPlan:
    """The plan of a loaded model (or one rank's shard of it) under an engine config, for the
    start-up log. The device limit is the GPU's total memory on CUDA, none on CPU."""
    device = model.device
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    return _engine_plan(
        model.config, model.dtype, model_quantization(model), max_model_len, engine_config, total,
        tensor_parallel_size,
    )  # fmt: skip


def check_fits(
    config: JambaConfig,
    dtype: str | torch.dtype,
    quantization: str | None,
    max_model_len: int | None,
    engine_config: EngineConfig,
    device: str | torch.device,
    tensor_parallel_size: int = 1,
) -> MemoryPlan:
    """Plan a load onto one CUDA device (per rank under tensor parallel) and raise
    `InsufficientMemoryError` if it cannot fit. The limit is the device's total memory times
    `engine_config.gpu_memory_utilization`."""
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    plan = _engine_plan(
        config, dtype, quantization, max_model_len, engine_config, total, tensor_parallel_size
    )
    plan.check(config)
    return plan


def _engine_plan(
    config: JambaConfig,
    dtype: str | torch.dtype,
    quantization: str | None,
    max_model_len: int | None,
    engine_config: EngineConfig,
    device_memory_bytes: int | None,
    tensor_parallel_size: int = 1,
) -> MemoryPlan:
    return plan_memory(
        config,
        dtype=dtype,
        quantization=quantization,
        max_model_len=max_model_len,
        max_num_seqs=engine_config.max_num_seqs,
        num_snapshot_slots=engine_config.num_snapshot_slots,
        max_num_batched_tokens=engine_config.max_num_batched_tokens,
        device_memory_bytes=device_memory_bytes,
        gpu_memory_utilization=engine_config.gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        ssm_dtype=resolve_ssm_dtype(engine_config.mamba_ssm_dtype),
        kv_cache_dtype=resolve_kv_cache_dtype(engine_config.kv_cache_dtype, resolve_dtype(dtype)),
    )
