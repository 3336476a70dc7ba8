"""Per-sequence model state: KV for attention layers, conv window + SSM state for Mamba layers.

`LayerCache` is what the model's layers ask of a cache; `HybridCache` is the contiguous form used
by `LLM` and plain forwards (one row per sequence, KV preallocated up to a capacity). The paged
engine cache implements the same three methods over KV blocks and state slots, so the layer math in
`model/modeling.py` runs unchanged on either.
"""

from __future__ import annotations

from typing import Protocol

import torch

from jamba_runtime.cache.batch import ForwardBatch
from jamba_runtime.config import JambaConfig


class LayerCache(Protocol):
    """What a layer reads and writes during a forward step."""

    def update_kv(
        self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's `(num_tokens, kv_heads, head_dim)` keys and values after each
        sequence's cached ones; return every sequence's keys and values so far, padded:
        `(batch, kv_heads, max_total_len, head_dim)` each. Positions past a sequence's total length
        hold anything; the caller masks them."""
        ...

    def mamba_state(self, layer_idx: int, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(conv_state (batch, d_inner, d_conv - 1), ssm_state (batch, d_inner, d_state))`
        for the batch's sequences; zeros for a sequence with no cached tokens."""
        ...

    def set_mamba_state(
        self, layer_idx: int, batch: ForwardBatch, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> None:
        """Store the states after this step (same shapes as `mamba_state` returns)."""
        ...


class MambaStateSlots:
    """Conv window + SSM state per slot for every Mamba layer: the constant-size part of a
    sequence's state. Both caches keep Mamba state this way; they differ only in KV layout."""

    def __init__(
        self,
        config: JambaConfig,
        num_slots: int,
        dtype: torch.dtype,
        device: torch.device | str,
        ssm_dtype: torch.dtype = torch.float32,
        tp_size: int = 1,
    ) -> None:
        # Under tensor parallel each rank keeps the state of its own `d_inner / tp_size` channels.
        d_inner, n, k = config.mamba_d_inner // tp_size, config.mamba_d_state, config.mamba_d_conv
        # (num_slots, d_inner, d_conv - 1) in the model dtype; (num_slots, d_inner, d_state) in float32.
        self.conv = {
            i: torch.zeros(num_slots, d_inner, k - 1, dtype=dtype, device=device) for i in config.mamba_layers
        }
        self.ssm = {
            i: torch.zeros(num_slots, d_inner, n, dtype=ssm_dtype, device=device) for i in config.mamba_layers
        }

    def mamba_state(self, layer_idx: int, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        conv = self.conv[layer_idx][batch.slots]
        ssm = self.ssm[layer_idx][batch.slots]
        fresh = [i for i, c in enumerate(batch.context_lens) if c == 0]
        if fresh:
            # A new sequence never sees a previous occupant's state, whatever the slot held.
            conv[fresh] = 0
            ssm[fresh] = 0
        return conv, ssm

    def set_mamba_state(
        self, layer_idx: int, batch: ForwardBatch, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> None:
        self.conv[layer_idx][batch.slots] = conv_state.to(self.conv[layer_idx].dtype)
        self.ssm[layer_idx][batch.slots] = ssm_state.to(self.ssm[layer_idx].dtype)

    def copy_slot(self, src: int, dst: int) -> None:
        """Copy every Mamba layer's state from slot `src` to slot `dst`."""
        for i in self.conv:
            self.conv[i][dst] = self.conv[i][src]
            self.ssm[i][dst] = self.ssm[i][src]

    def state_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.conv.values(), *self.ssm.values()])


class HybridCache(MambaStateSlots):
    """Contiguous hybrid cache: `num_slots` rows, each holding one sequence of up to `capacity` tokens.

    Memory per slot: attention layers keep `2 * kv_heads * head_dim * capacity` values each; Mamba
    layers keep a constant `d_inner * (d_conv - 1)` conv window (model dtype) and a
    `d_inner * d_state` SSM state in float32 (as transformers does, and as AI21 recommends).

    Example:
        >>> cache = HybridCache(cfg, num_slots=4, capacity=2048, dtype=torch.bfloat16, device="cuda")
        >>> logits = model.forward_packed(token_ids, ForwardBatch.build([5, 3]), cache)
    """

    def __init__(
        self,
        config: JambaConfig,
        num_slots: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ssm_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(config, num_slots, dtype, device, ssm_dtype)
        self.config = config
        self.num_slots = num_slots
        self.capacity = capacity
        g, d = config.num_key_value_heads, config.head_dim
        shape = (num_slots, g, capacity, d)
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in config.attention_layers}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in config.attention_layers}

    def nbytes(self) -> int:
        kv = [*self.keys.values(), *self.values.values()]
        return sum(t.numel() * t.element_size() for t in kv) + self.state_nbytes()

    def update_kv(
        self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        totals = batch.total_lens()
        assert max(totals) <= self.capacity, "caller checks lengths against the cache capacity"
        kbuf, vbuf = self.keys[layer_idx], self.values[layer_idx]
        ctx = torch.tensor(batch.context_lens, device=key.device)
        pos = ctx[batch.token_seq] + batch.token_pos  # (num_tokens,) absolute position of each new token
        rows = batch.slots[batch.token_seq]
        kbuf[rows, :, pos] = key.to(kbuf.dtype)
        vbuf[rows, :, pos] = value.to(vbuf.dtype)
        length = max(totals)
        return kbuf[batch.slots, :, :length], vbuf[batch.slots, :, :length]
