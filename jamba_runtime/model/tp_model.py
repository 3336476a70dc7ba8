"""A tensor- and expert-parallel Jamba made from the ordinary model: shard it, then run it.

`shard_model` keeps this rank's slice of every parameter (rules in `sharding.py`) and swaps in the
collectives (`tp_layers.py`); the layers' own `forward` code then runs unchanged on the smaller
tensors: attention on `heads / N` query and `kv_heads / N` KV heads, Mamba on `d_inner / N`
channels, the dense MLP on `intermediate / N`, the MoE block on `experts / N` whole experts.
Per block that is one all-reduce after attention's `o_proj`, two in Mamba (the small `x_proj`
output before the dt/B/C norms, and `out_proj`), and one after the MLP or MoE.

`prefill` runs whole prompts (no cached past) on a `PrefillCache`; the engine runs sharded models
on its paged cache through `engine/tensor_parallel.py` (`LLM(..., tensor_parallel_size=N)`).
"""

from __future__ import annotations

import torch
from torch import nn

from jamba_runtime.cache.batch import ForwardBatch
from jamba_runtime.model.modeling import JambaForCausalLM, JambaMambaMixer, JambaSparseMoeBlock
from jamba_runtime.model.sharding import check_tensor_parallel, local_experts, shard_tensor
from jamba_runtime.model.tp_layers import ExpertParallelMoe, RowParallelLinear, TensorParallelGroup


def shard_model(model: JambaForCausalLM, tp: TensorParallelGroup) -> JambaForCausalLM:
    """Turn a loaded full model into rank `tp.rank`'s shard, in place; returns it.

    Raises `InvalidRequestError` when `tp.world_size` does not divide the heads, KV heads,
    `d_inner` or `intermediate_size`. The experts of other ranks are dropped (their memory is
    freed once nothing else refers to them)."""
    cfg = model.config
    check_tensor_parallel(cfg, tp.world_size)
    if tp.world_size == 1:
        return model
    world = tp.world_size
    for name, p in list(model.named_parameters()):
        part = shard_tensor(name, p.detach(), tp.rank, world, cfg.num_experts)
        if part is not None and part is not p:
            _set_parameter(model, name, part)
    for layer in model.model.layers:
        if layer.is_attention:
            attn = layer.self_attn
            attn.num_heads //= world
            attn.num_kv_heads //= world
            attn.o_proj = _row_parallel(attn.o_proj, tp)
        else:
            mamba: JambaMambaMixer = layer.mamba
            mamba.d_inner //= world
            # x_proj contracts over d_inner: each rank has a partial sum of the small
            # (dt_rank + 2 * d_state) output, summed before the dt/B/C norms.
            mamba.x_proj = _row_parallel(mamba.x_proj, tp)
            mamba.out_proj = _row_parallel(mamba.out_proj, tp)
        ff = layer.feed_forward
        if isinstance(ff, JambaSparseMoeBlock):
            own = local_experts(tp.rank, cfg.num_experts, world)
            layer.feed_forward = ExpertParallelMoe(ff.router, {e: ff.experts[e] for e in own}, ff.top_k, tp)
        else:
            ff.down_proj = _row_parallel(ff.down_proj, tp)
    return model


def _row_parallel(linear: nn.Linear, tp: TensorParallelGroup) -> RowParallelLinear:
    bias = None if linear.bias is None else linear.bias.detach()
    return RowParallelLinear(linear.weight.detach(), bias, tp)


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, nn.Parameter(tensor, requires_grad=False))


class PrefillCache:
    """A `LayerCache` for whole prompts with no past: attention sees only this step's keys and
    values, Mamba starts from zero state; the states after the step are kept in `conv` / `ssm`.
    Sizes come from the (possibly sharded) model's layers, so one class serves every rank."""

    def __init__(self, model: JambaForCausalLM, batch_size: int) -> None:
        self.batch_size = batch_size
        self.dims: dict[int, tuple[int, int, int]] = {}  # layer -> (d_inner, d_conv - 1, d_state)
        for i, layer in enumerate(model.model.layers):
            if not layer.is_attention:
                m = layer.mamba
                self.dims[i] = (m.d_inner, m.conv1d.weight.shape[-1] - 1, m.d_state)
        self.dtype = model.dtype
        self.device = model.device
        self.conv: dict[int, torch.Tensor] = {}
        self.ssm: dict[int, torch.Tensor] = {}

    def update_kv(
        self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert not any(batch.context_lens), "PrefillCache runs whole prompts only"
        return batch.pad(key).transpose(1, 2), batch.pad(value).transpose(1, 2)

    def mamba_state(self, layer_idx: int, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        d_inner, width, d_state = self.dims[layer_idx]
        b = batch.batch_size
        conv = torch.zeros(b, d_inner, width, dtype=self.dtype, device=self.device)
        # SSM state in float32, as every cache of this runtime keeps it.
        return conv, torch.zeros(b, d_inner, d_state, dtype=torch.float32, device=self.device)

    def set_mamba_state(
        self, layer_idx: int, batch: ForwardBatch, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> None:
        self.conv[layer_idx], self.ssm[layer_idx] = conv_state, ssm_state


def prefill(model: JambaForCausalLM, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Logits of every position of every prompt, as one packed forward.

    Works on a full model or on a shard (then every rank of the group must call it with the same
    prompts, as the collectives pair up across ranks). Returns one `(len(prompt), vocab)` tensor
    per prompt; under tensor parallel every rank gets the same logits (the LM head is replicated).
    """
    assert prompts and all(prompts), "at least one prompt, none empty"
    device = model.device
    batch = ForwardBatch.build([len(p) for p in prompts], device=device)
    token_ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=device)
    logits = model.forward_packed(token_ids, batch, PrefillCache(model, len(prompts)))
    bounds = batch.cu_seqlens.tolist()
    return [logits[bounds[i] : bounds[i + 1]] for i in range(len(prompts))]
