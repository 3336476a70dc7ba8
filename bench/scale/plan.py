"""The memory plan of a shape over N GPUs, computed without allocating anything.

`scale_plan` wraps `jamba_runtime.engine.memory_plan.plan_memory` (the engine's own plan, the same
sharding rules as the load) and adds the numbers the scale question asks for: the cache per token
and per sequence on one GPU and over all of them, the context the GPUs hold at the configured
utilization, and the headroom left when one sequence of `target_context` tokens is resident.

Tensor and expert parallel use the same ranks in this runtime: attention heads, KV heads and Mamba
channels are split over `tensor_parallel_size` GPUs and the experts of every MoE layer are spread
over the same GPUs (`model/sharding.py`). The KV cache of every token is split by KV heads, so the
tokens that fit are the same on every rank: the pool one GPU holds is the pool of the whole group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from jamba_runtime.config import JambaConfig
from jamba_runtime.engine.memory_plan import MemoryPlan, plan_memory

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class ScalePlan:
    """A `MemoryPlan` (one rank) with the group-wide numbers derived from it."""

    plan: MemoryPlan
    num_gpus: int
    target_context: int
    kv_bytes_per_token_all_gpus: int
    mamba_bytes_per_sequence: int  # one sequence's state on one GPU, all Mamba layers
    kv_bytes_per_target_sequence: int  # one GPU's KV of one target_context sequence
    headroom_bytes: int | None  # budget - (weights + state + activations + reserve + target KV)
    target_sequences: int | None  # target_context sequences whose KV fits beside the rest

    @property
    def fits_target(self) -> bool | None:
        return None if self.headroom_bytes is None else self.headroom_bytes >= 0

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        headroom = None if self.headroom_bytes is None else self.headroom_bytes / GIB
        return {
            "gpus": self.num_gpus,
            "tensor_parallel_size": p.tensor_parallel_size,
            "expert_parallel_size": p.tensor_parallel_size,
            "dtype": str(p.dtype).removeprefix("torch."),
            "quantization": p.quantization,
            "weights_gib_per_gpu": p.weights_bytes / GIB,
            "expert_weights_gib_per_gpu": p.expert_weights_bytes / GIB,
            "kv_bytes_per_token_per_gpu": p.kv_bytes_per_token,
            "kv_bytes_per_token_all_gpus": self.kv_bytes_per_token_all_gpus,
            "mamba_state_mib_per_sequence_per_gpu": self.mamba_bytes_per_sequence / MIB,
            "mamba_state_mib_per_sequence_all_gpus": self.mamba_bytes_per_sequence * self.num_gpus / MIB,
            "state_slots": p.num_slots,
            "activation_gib_per_gpu": p.activation_bytes / GIB,
            "reserve_gib_per_gpu": p.reserve_bytes / GIB,
            "device_memory_gib": None if p.device_memory_bytes is None else p.device_memory_bytes / GIB,
            "gpu_memory_utilization": p.gpu_memory_utilization,
            "budget_gib_per_gpu": None if p.budget_bytes is None else p.budget_bytes / GIB,
            "kv_tokens_that_fit": p.kv_tokens,
            "longest_context": p.longest_context,
            "target_context": self.target_context,
            "kv_gib_per_target_sequence_per_gpu": self.kv_bytes_per_target_sequence / GIB,
            "headroom_gib_per_gpu_at_target": headroom,
            "target_sequences_that_fit": self.target_sequences,
            "fits_target": self.fits_target,
        }

    def summary(self) -> str:
        """The engine's plan lines plus the group-wide lines."""
        p = self.plan
        lines = [
            p.summary(),
            f"  over {self.num_gpus} GPUs (tensor parallel {p.tensor_parallel_size}, experts spread over the "
            f"same ranks, {p.expert_weights_bytes / GIB:.2f} GiB of experts each):",
            f"    KV per token     {p.kv_bytes_per_token:,} B per GPU, {self.kv_bytes_per_token_all_gpus:,} B "
            f"all GPUs; {self.kv_bytes_per_target_sequence / GIB:.3f} GiB per GPU for "
            f"{self.target_context:,} tokens",
            f"    Mamba state      {self.mamba_bytes_per_sequence / MIB:.2f} MiB per sequence per GPU, "
            f"{self.mamba_bytes_per_sequence * self.num_gpus / MIB:.2f} MiB all GPUs",
        ]
        if self.headroom_bytes is not None:
            verdict = "fits" if self.fits_target else "DOES NOT FIT"
            lines.append(
                f"    {self.target_context:,}-token sequence: {verdict}, headroom "
                f"{self.headroom_bytes / GIB:.2f} GiB per GPU; {self.target_sequences:,} such sequences' KV "
                f"fit at once; {p.kv_tokens:,} KV tokens in all"
            )
        return "\n".join(lines)


def scale_plan(
    config: JambaConfig,
    tensor_parallel_size: int,
    quantization: str | None = "experts_int8",
    dtype: str | torch.dtype = "bfloat16",
    device_memory_bytes: int | None = 80 * GIB,
    gpu_memory_utilization: float = 0.9,
    max_num_seqs: int = 64,
    num_snapshot_slots: int = 4,
    max_num_batched_tokens: int = 8192,
    target_context: int | None = None,
) -> ScalePlan:
    """Plan `config` over `tensor_parallel_size` GPUs of `device_memory_bytes` each (None: no
    limit), with `max_model_len = target_context` (default: the model's limit). Raises
    `InvalidRequestError` for a size that does not divide the model's heads, KV heads, Mamba
    channels or experts."""
    target = target_context or config.max_position_embeddings
    plan = plan_memory(
        config,
        dtype=dtype,
        quantization=quantization,
        max_model_len=target,
        max_num_seqs=max_num_seqs,
        num_snapshot_slots=num_snapshot_slots,
        max_num_batched_tokens=max_num_batched_tokens,
        tensor_parallel_size=tensor_parallel_size,
        device_memory_bytes=device_memory_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    budget = plan.budget_bytes
    headroom = None if budget is None else budget - plan.required_bytes
    sequences = None
    if plan.kv_tokens is not None:
        sequences = plan.kv_tokens // target if plan.kv_bytes_per_token else plan.num_slots
    return ScalePlan(
        plan=plan,
        num_gpus=tensor_parallel_size,
        target_context=target,
        kv_bytes_per_token_all_gpus=plan.kv_bytes_per_token * tensor_parallel_size,
        mamba_bytes_per_sequence=plan.mamba_slot_bytes,
        kv_bytes_per_target_sequence=plan.kv_bytes_per_token * target,
        headroom_bytes=headroom,
        target_sequences=sequences,
    )
