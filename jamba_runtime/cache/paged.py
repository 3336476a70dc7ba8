"""The engine's cache tensors: paged KV blocks for attention layers, state slots for Mamba layers.

It implements `LayerCache` (see `state.py`) with the step's block tables, slot mapping and slot
indices from `ForwardBatch`, so the model's layers run on it unchanged. Which block or slot belongs
to whom is decided by `CacheManager`; this class only holds and moves the numbers.

On CUDA (or under Triton's interpreter) the layers skip `LayerCache` and hand its tensors to the
packed/paged kernels in place (`paged_kernels_available`, `kv_pool`, `state_pool`; docs/runtime.md).
"""

from __future__ import annotations

import torch

from jamba_runtime.cache.batch import ForwardBatch
from jamba_runtime.cache.state import MambaStateSlots
from jamba_runtime.config import JambaConfig
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.kernels.backend import use_triton

_MIB = 1 << 20


def block_bytes(config: JambaConfig, block_size: int, dtype: torch.dtype, tp_size: int = 1) -> int:
    """Bytes of one KV block across all attention layers (keys and values), on one rank of
    `tp_size` (each keeps `num_key_value_heads / tp_size` heads)."""
    per_token = 2 * (config.num_key_value_heads // tp_size) * config.head_dim * _itemsize(dtype)
    return len(config.attention_layers) * block_size * per_token


def slot_bytes(
    config: JambaConfig, dtype: torch.dtype, ssm_dtype: torch.dtype = torch.float32, tp_size: int = 1
) -> int:
    """Bytes of one Mamba state slot across all Mamba layers (conv window + SSM state), on one
    rank of `tp_size`."""
    d = config.mamba_d_inner // tp_size
    per_layer = d * (config.mamba_d_conv - 1) * _itemsize(dtype) + d * config.mamba_d_state * _itemsize(
        ssm_dtype
    )
    return len(config.mamba_layers) * per_layer


KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn}
SSM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """`EngineConfig.kv_cache_dtype` -> the KV tensors' dtype ("auto": the model's); raises
    `InvalidRequestError` naming the choices for anything else."""
    if name not in KV_CACHE_DTYPES:
        raise InvalidRequestError(
            f"kv_cache_dtype {name!r} is not supported: use one of {', '.join(KV_CACHE_DTYPES)}"
        )
    return KV_CACHE_DTYPES[name] or model_dtype


def resolve_ssm_dtype(name: str) -> torch.dtype:
    """`EngineConfig.mamba_ssm_dtype` -> the SSM state slots' dtype; raises `InvalidRequestError`."""
    if name not in SSM_DTYPES:
        raise InvalidRequestError(
            f"mamba_ssm_dtype {name!r} is not supported: use one of {', '.join(SSM_DTYPES)}"
        )
    return SSM_DTYPES[name]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class PagedHybridCache(MambaStateSlots):
    """KV in `(num_blocks * block_size, kv_heads, head_dim)` per attention layer; conv
    `(num_slots, d_inner, d_conv - 1)` and SSM `(num_slots, d_inner, d_state)` (float32) per Mamba layer."""

    def __init__(
        self,
        config: JambaConfig,
        num_blocks: int,
        block_size: int,
        num_slots: int,
        dtype: torch.dtype,
        device: torch.device | str,
        ssm_dtype: torch.dtype = torch.float32,
        kv_dtype: torch.dtype | None = None,
        tp_size: int = 1,
    ) -> None:
        super().__init__(config, num_slots, dtype, device, ssm_dtype, tp_size)
        kv_dtype = kv_dtype or dtype  # float8 KV: cast on store, upcast on read
        self.config = config
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_slots = num_slots
        g, d = config.num_key_value_heads // tp_size, config.head_dim
        # One row past the last block: padding rows of a captured decode batch store their
        # (unused) key and value there; no block table ever points at it.
        self.scratch_row = num_blocks * block_size
        positions = self.scratch_row + 1
        self.keys = {
            i: torch.zeros(positions, g, d, dtype=kv_dtype, device=device) for i in config.attention_layers
        }
        self.values = {
            i: torch.zeros(positions, g, d, dtype=kv_dtype, device=device) for i in config.attention_layers
        }
        self._probe = torch.empty(0, dtype=dtype, device=device)  # where the tensors live, for dispatch

    def nbytes(self) -> int:
        kv = [*self.keys.values(), *self.values.values()]
        return sum(t.numel() * t.element_size() for t in kv) + self.state_nbytes()

    # ---- the fast path: tensors handed to the kernels in place ------------------------------------
    def paged_kernels_available(self) -> bool:
        """True when the packed/paged Triton kernels can run on these tensors under the selected
        kernel backend: CUDA (or `triton` forced under the interpreter), float32 SSM slots (the
        scan kernels keep the state in float32), and a conv of at most 5 taps."""
        if self.config.mamba_d_conv > 5:
            return False
        if any(t.dtype != torch.float32 for t in self.ssm.values()):
            return False
        return use_triton(self._probe)

    def kv_pool(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer_idx`'s `(num_blocks * block_size, kv_heads, head_dim)` keys and values."""
        return self.keys[layer_idx], self.values[layer_idx]

    def state_pool(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer_idx`'s conv `(num_slots, d_inner, d_conv - 1)` and float32 SSM
        `(num_slots, d_inner, d_state)` state slots, updated in place by the kernels."""
        return self.conv[layer_idx], self.ssm[layer_idx]

    # ---- LayerCache ------------------------------------------------------------------------------
    def update_kv(
        self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch.block_tables is not None and batch.slot_mapping is not None, (
            "paged cache needs block tables"
        )
        kbuf, vbuf = self.keys[layer_idx], self.values[layer_idx]
        kbuf[batch.slot_mapping] = key.to(kbuf.dtype)
        vbuf[batch.slot_mapping] = value.to(vbuf.dtype)
        length = max(batch.total_lens())
        return self._gather(kbuf, batch.block_tables, length), self._gather(vbuf, batch.block_tables, length)

    def _gather(self, buf: torch.Tensor, tables: torch.Tensor, length: int) -> torch.Tensor:
        """`(batch, kv_heads, length, head_dim)`: each sequence's positions 0..length-1 via its blocks.
        Reference path; on the fast path the paged attention kernels read the blocks in place."""
        nblk = -(-length // self.block_size)
        offs = torch.arange(self.block_size, device=buf.device)
        idx = (tables[:, :nblk, None] * self.block_size + offs).reshape(tables.shape[0], -1)[:, :length]
        return buf[idx].transpose(1, 2)

    # ---- snapshots (copy_slot comes from MambaStateSlots) ------------------------------------------
    def copy_block(self, src: int, dst: int) -> None:
        """Copy one KV block (all attention layers), for copy-on-write of a shared partial block."""
        s = slice(src * self.block_size, (src + 1) * self.block_size)
        d = slice(dst * self.block_size, (dst + 1) * self.block_size)
        for i in self.keys:
            self.keys[i][d] = self.keys[i][s]
            self.values[i][d] = self.values[i][s]
