"""Random weights made from a config alone: `load_model(..., load_format="dummy")`.

For measuring speed and memory of a shape without its checkpoint (both depend on shapes, not
values), as vLLM's dummy format does, and for the tiny test model. The scales keep activations
O(1) through any depth: norms 1, linear weights `N(0, 1/fan_in)`, Mamba's own `A_log`, `D` and
`dt` initialisation; int8 experts get uniform int8 values with per-row scales of the same std.

Every tensor comes from a generator seeded by `(seed, its name)`, so tensors every
tensor-parallel rank holds whole (embeddings, norms, router, LM head) are the same on every rank.
Expert weights are made directly in the stacked layout (`expert_layout.py`) and in their final
dtype: an int8 Mini never has a bf16 copy of its experts.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import nn

from jamba_runtime.config import JambaConfig
from jamba_runtime.model.expert_layout import expert_projections
from jamba_runtime.model.modeling import empty_model
from jamba_runtime.model.quantization import Int8Linear
from jamba_runtime.model.sharding import shard_tensor
from jamba_runtime.model.tp_layers import TensorParallelGroup


def init_tensor(
    name: str,
    shape: tuple[int, ...],
    config: JambaConfig,
    gen: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One float parameter named `name` (checkpoint naming), random from `gen` on `device`."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, device=device, dtype=dtype)
    if name.endswith("mamba.A_log"):
        a = torch.arange(1, config.mamba_d_state + 1, dtype=torch.float32, device=device)
        return torch.log(a).expand(shape).to(dtype).contiguous()
    if name.endswith("mamba.D"):
        return torch.ones(shape, device=device, dtype=dtype)
    if name.endswith("dt_proj.bias"):  # Mamba's init: dt log-uniform in [1e-3, 1e-1], as softplus^-1(dt)
        u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
        dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        return (dt + torch.log(-torch.expm1(-dt))).to(dtype)
    if name.endswith("conv1d.bias"):
        return torch.zeros(shape, device=device, dtype=dtype)
    t = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    if name == "model.embed_tokens.weight":
        return t
    fan_in = shape[-1] if len(shape) == 2 else math.prod(shape[1:])
    return t.div_(math.sqrt(fan_in))


def init_dummy_weights(
    model: nn.Module,
    config: JambaConfig,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    tp: TensorParallelGroup | None = None,
) -> None:
    """Give every parameter of `model` (built on the meta device, possibly int8-prepared and
    sharded for `tp`) random values on `device`, in place. Float parameters take `dtype`, except
    Mamba's `A_log` and `D` (float32, as the loader keeps them).

    Each tensor is made whole from its own seed, then this rank's part is cut out: a shard holds
    exactly the values of the same tensor in the unsharded model (one whole tensor at a time is
    the transient cost), so tensor-parallel runs of dummy weights compute what one GPU does."""
    rank, world = (tp.rank, tp.world_size) if tp is not None else (0, 1)

    def generator(name: str) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))

    for module_name, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if isinstance(experts, (nn.ModuleList, nn.ModuleDict)) and len(experts):
            _init_experts(f"{module_name}.experts", experts, generator, device, dtype)
    full_shapes = {name: tuple(p.shape) for name, p in empty_model(config).named_parameters()}
    for name, p in list(model.named_parameters()):
        if not p.is_meta or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue  # an expert made above, or the tied head (set below)
        keep32 = name.endswith(("mamba.A_log", "mamba.D"))
        whole = init_tensor(
            name, full_shapes[name], config, generator(name), device, torch.float32 if keep32 else dtype
        )
        part = shard_tensor(name, whole, rank, world, config.num_experts)
        assert part is not None and tuple(part.shape) == tuple(p.shape), name
        _assign(model, name, part)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


def _init_experts(
    prefix: str,
    experts: nn.ModuleList | nn.ModuleDict,
    generator: Callable[[str], torch.Generator],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """One MoE layer's experts, made as layer-wide stacks with each expert's weights as views;
    expert `e`'s values come from its own names' seeds, whichever rank holds it."""
    numbers = list(range(len(experts))) if isinstance(experts, nn.ModuleList) else sorted(map(int, experts))
    gate, up, down = expert_projections(experts)
    e, hidden, inter = len(gate), gate[0].in_features, gate[0].out_features
    int8 = isinstance(gate[0], Int8Linear)
    w13 = torch.empty(e, 2 * inter, hidden, dtype=torch.int8 if int8 else dtype, device=device)
    w2 = torch.empty(e, hidden, inter, dtype=w13.dtype, device=device)
    s13 = torch.empty(e, 2 * inter, device=device) if int8 else None
    s2 = torch.empty(e, hidden, device=device) if int8 else None
    for x, number in enumerate(numbers):
        parts = (
            (gate[x], "gate_proj", w13[x, :inter], None if s13 is None else s13[x, :inter], hidden),
            (up[x], "up_proj", w13[x, inter:], None if s13 is None else s13[x, inter:], hidden),
            (down[x], "down_proj", w2[x], None if s2 is None else s2[x], inter),
        )
        for layer, proj, w, scale, fan_in in parts:
            gen = generator(f"{prefix}.{number}.{proj}.weight")
            if scale is None:
                w.normal_(generator=gen).div_(math.sqrt(fan_in))
            else:
                w.random_(-127, 128, generator=gen)
                # Uniform ints in [-127, 127] have std 127 / sqrt(3): scaled, a row's std is 1/sqrt(fan_in).
                scale.fill_(math.sqrt(3) / (127 * math.sqrt(fan_in)))
                layer.weight_scale = nn.Parameter(scale, requires_grad=False)
            layer.weight = nn.Parameter(w, requires_grad=False)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, nn.Parameter(tensor, requires_grad=False))
