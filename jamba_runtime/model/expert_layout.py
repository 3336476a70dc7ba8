"""Where a MoE layer's expert weights live: one module per expert (the checkpoints' naming), with
the weights laid out as views of layer-wide stacked buffers, the layout the grouped kernels read.

`stack_experts` moves every MoE layer of a loaded model into that layout in place, one layer at a
time, so the stacks cost no second copy of the experts (float: `w13 (experts, 2 * inter, hidden)`,
`w2 (experts, hidden, inter)`; int8: `quantization.Int8Stack`). `quantize_experts_int8` turns a
loaded model's float experts into int8 (`quantization.Int8Linear`) and lays them out so.

A layer's experts are a `ModuleList` (`JambaSparseMoeBlock`) or, under expert parallel, a
`ModuleDict` keyed by the checkpoint's expert numbers (`tp_layers.ExpertParallelMoe`), in
ascending order.
"""

from __future__ import annotations

import torch
from torch import nn

from jamba_runtime.model.quantization import (
    EXPERT_PROJECTIONS,
    Int8Linear,
    is_expert_weight,
    stack_int8_experts,
    stacked_int8_view,
)

Projections = tuple[list[nn.Module], list[nn.Module], list[nn.Module]]


def expert_projections(experts: nn.ModuleList | nn.ModuleDict) -> Projections:
    """`(gate_proj, up_proj, down_proj)` of each expert, in expert order."""
    mods = (
        list(experts)
        if isinstance(experts, nn.ModuleList)
        else [experts[k] for k in sorted(experts, key=int)]
    )
    return [m.gate_proj for m in mods], [m.up_proj for m in mods], [m.down_proj for m in mods]


def stacked_rows_view(parts: list[list[torch.Tensor]]) -> torch.Tensor | None:
    """A `(len(parts), rows, cols)` view over `parts[e]` concatenated by rows, when they already lie
    back to back in one storage in that order; None otherwise (the caller copies)."""
    first = parts[0][0]
    cols = first.shape[1]
    rows = sum(t.shape[0] for t in parts[0])
    storage = first.untyped_storage().data_ptr()
    pos = first.storage_offset()
    for group in parts:
        for t in group:
            same = t.untyped_storage().data_ptr() == storage and t.dtype == first.dtype
            if not (same and t.is_contiguous() and t.shape[1] == cols and t.storage_offset() == pos):
                return None
            pos += t.numel()
        if sum(t.shape[0] for t in group) != rows:
            return None
    return first.detach().as_strided((len(parts), rows, cols), (rows * cols, cols, 1), first.storage_offset())


def float_stack_view(
    gate: list[nn.Module], up: list[nn.Module], down: list[nn.Module]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(w13, w2)` as views when the float experts lie in the stacked layout; None otherwise
    (int8 experts, or separate tensors)."""
    if any(isinstance(m, Int8Linear) for m in (*gate, *up, *down)):
        return None
    w13 = stacked_rows_view([[g.weight, u.weight] for g, u in zip(gate, up, strict=True)])
    w2 = stacked_rows_view([[d.weight] for d in down])
    return None if w13 is None or w2 is None else (w13, w2)


@torch.no_grad()
def stack_float_experts(
    gate: list[nn.Module], up: list[nn.Module], down: list[nn.Module]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move one layer's float experts into two stacked buffers in place (each weight becomes a
    view, the old tensors are freed). Costs one extra copy of this layer's experts while it runs."""
    first = gate[0].weight
    e, (inter, hidden) = len(gate), first.shape
    w13 = torch.empty(e, 2 * inter, hidden, dtype=first.dtype, device=first.device)
    w2 = torch.empty(e, hidden, inter, dtype=first.dtype, device=first.device)
    for x in range(e):
        for layer, dst in ((gate[x], w13[x, :inter]), (up[x], w13[x, inter:]), (down[x], w2[x])):
            dst.copy_(layer.weight)
            layer.weight = nn.Parameter(dst, requires_grad=False)
    return w13, w2


def stack_experts(model: nn.Module, float_experts: bool = True) -> int:
    """Lay out every MoE layer's experts stacked, in place, unless already so: int8 experts always
    (the int8 kernel reads only that layout), float ones when `float_experts` (the grouped matmul
    reads the stacks; elsewhere separate tensors save fine with safetensors). Returns the layers
    moved."""
    done = 0
    for module in model.modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, (nn.ModuleList, nn.ModuleDict)) or not len(experts):
            continue
        gate, up, down = expert_projections(experts)
        layers = [*gate, *up, *down]
        if any(m.weight.is_meta for m in layers):
            continue
        if all(isinstance(m, Int8Linear) for m in layers):
            if stacked_int8_view(gate, up, down) is None:
                stack_int8_experts(gate, up, down)  # type: ignore[arg-type]
                done += 1
        elif float_experts and not any(isinstance(m, Int8Linear) for m in layers):
            if float_stack_view(gate, up, down) is None:
                stack_float_experts(gate, up, down)
                done += 1
    return done


def quantize_experts_int8(model: nn.Module) -> list[str]:
    """Quantize the float expert weights of a loaded model in place (each on its own device),
    then lay each layer's int8 experts out stacked (`stack_experts_int8`). Returns the names of
    the quantized weights; a model without experts is left as it was."""
    names: list[str] = []
    for module_name, module in list(model.named_modules()):
        for proj in EXPERT_PROJECTIONS:
            child = getattr(module, proj, None)
            full = f"{module_name}.{proj}.weight"
            if isinstance(child, nn.Linear) and is_expert_weight(full):
                setattr(module, proj, Int8Linear.from_float(child.weight.detach()))
                names.append(full)
    stack_experts_int8(model)
    return names


def stack_experts_int8(model: nn.Module) -> int:
    """Lay out the int8 experts of every MoE layer of `model` stacked (`stack_int8_experts`), one
    layer at a time, unless already so. Returns how many layers were restacked."""
    return stack_experts(model, float_experts=False)
