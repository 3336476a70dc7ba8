"""What an engine is made from: `EngineConfig` (its sizes) and `EngineArgs` (every argument of a
load: the checkpoint, where and how to load it, and the engine config), each validated where it is
made."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jamba_runtime.errors import InvalidRequestError

# The CPU default of `EngineConfig.long_prefill_token_threshold` (bench/NOTES.md: the ITL rows).
CPU_LONG_PREFILL_TOKENS = 256


@dataclass(frozen=True)
class EngineConfig:
    """Sizes of the engine.

    Attributes:
        max_num_seqs: most sequences running at once (one Mamba state slot each).
        max_num_batched_tokens: token budget per step; longer prompts are prefilled in chunks.
        long_prefill_token_threshold: most tokens of one prompt in one step, so that a long
            prompt adds at most one such chunk to the step time of the sequences running beside
            it. None: `CPU_LONG_PREFILL_TOKENS` on CPU, where a step's time grows with its tokens
            (the reference path computes a chunk token by token), and no cap beyond the budget on
            CUDA; 0: no cap.
        block_size: tokens per KV block.
        cache_memory_gb: memory for the cache (KV blocks + state slots). Default: 1 GiB on CPU;
            on CUDA, `gpu_memory_utilization` of the memory free after loading the model.
        max_model_len: longest sequence (prompt + output); default: the model's limit, capped by
            what the cache can hold.
        num_snapshot_slots: state slots kept for prefix snapshots: at most this many are kept
            (oldest dropped first; 0 keeps none), so the `max_num_seqs` others stay with requests.
        cuda_graphs: replay decode steps from CUDA graphs captured per padded batch size (CUDA
            fast path only; see `engine/graphs.py`). Off runs every step eagerly, for debugging
            and for comparison.
        kv_cache_dtype: "auto" (the model dtype) or "fp8" (float8 e4m3, half the bytes of bf16
            per cached token; keys and values are cast when stored, no scale, and upcast when
            read).
        mamba_ssm_dtype: "float32" (default, as AI21 recommends) or "bfloat16" (half the state
            slot memory; the GPU fast path's scan kernels keep float32 state, so bfloat16 runs the
            reference path).
        async_scheduling: launch a decode step before the host has read the last step's tokens,
            feeding them on the device, so the host's work between steps overlaps the GPU's
            (`engine/ahead.py`; the same tokens either way). None: on for a model on CUDA, off on
            CPU (nothing to overlap there); never with tensor parallel.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    long_prefill_token_threshold: int | None = None
    block_size: int = 16
    cache_memory_gb: float | None = None
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    num_snapshot_slots: int = 4
    cuda_graphs: bool = True
    kv_cache_dtype: str = "auto"
    mamba_ssm_dtype: str = "float32"
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        if self.long_prefill_token_threshold is not None and self.long_prefill_token_threshold < 0:
            raise InvalidRequestError(
                f"long_prefill_token_threshold={self.long_prefill_token_threshold} is invalid: give 0 "
                "(no cap), a positive token count, or None (the device's default)"
            )
        if self.max_num_seqs < 1:
            raise InvalidRequestError(f"max_num_seqs={self.max_num_seqs} is invalid: it must be >= 1")
        if self.cache_memory_gb is not None and not math.isfinite(self.cache_memory_gb):
            raise InvalidRequestError(
                f"cache_memory_gb={self.cache_memory_gb} is invalid: give a size in GiB"
            )


@dataclass(frozen=True)
class EngineArgs:
    """Every argument of `LLM` and `AsyncLLM`, once: what to load, where, how, and the engine's
    sizes. `LLM(model, **kwargs)` takes these fields as keywords; `LLM.from_args(args)` takes the
    object.

    Attributes:
        model: checkpoint directory or hub id.
        tokenizer: a tokenizer directory, when not the model's.
        device: "cpu" or "cuda" (or "cuda:N").
        dtype: "float32", "bfloat16" or "float16".
        max_model_len: context limit in tokens, prompt + output (default: the model's
            `max_position_embeddings`, capped by the cache); when set it replaces
            `engine.max_model_len`.
        local_files_only: a hub id is looked up in the local hub cache only, never downloaded.
        quantization: None, or "experts_int8" (MoE expert weights in int8 with per-output-channel
            scales, quantized at load; everything else stays in `dtype`).
        tensor_parallel_size: spread the model over this many processes of this host, one per
            GPU on CUDA (gloo processes on CPU): attention heads, Mamba channels and experts split
            (docs/scaling.md). The calling process is rank 0 and runs the engine.
        load_format: "auto" (the checkpoint's safetensors), or "dummy": random weights from
            `config.json` alone, to measure a shape's speed and memory without its weights.
        engine: cache and batching sizes (`EngineConfig`; None: the defaults).

    Raises `InvalidRequestError` for a `tensor_parallel_size` below 1 (what needs the model's
    config, such as a `max_model_len` past its limit, is checked at load).

    Example:
        >>> args = EngineArgs("models/tiny", max_model_len=4096, engine=EngineConfig(max_num_seqs=16))
        >>> llm = LLM.from_args(args)
    """

    model: str | Path
    tokenizer: str | Path | None = None
    device: str | torch.device = "cpu"
    dtype: str | torch.dtype = "float32"
    max_model_len: int | None = None
    local_files_only: bool = False
    quantization: str | None = None
    tensor_parallel_size: int = 1
    load_format: str = "auto"
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.engine is None:
            object.__setattr__(self, "engine", EngineConfig())
        if self.tensor_parallel_size < 1:
            raise InvalidRequestError(
                f"tensor_parallel_size={self.tensor_parallel_size} is invalid: it must be >= 1"
            )

    def engine_config(self) -> EngineConfig:
        """`engine`, with `max_model_len` in it when that is set here."""
        if self.max_model_len is None:
            return self.engine
        return dataclasses.replace(self.engine, max_model_len=self.max_model_len)
