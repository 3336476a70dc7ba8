"""ExpertsInt8: weight-only int8 for the MoE expert weights, per-output-channel scales.

The experts hold most of a Jamba's parameters (45 B of the Mini shape's 51.6 B), so storing only
them in int8 takes the Mini shape from 103 GB (bf16) to about 58 GB: one 80 GB GPU. Attention,
Mamba, the router, embeddings and the LM head keep the model dtype; activations are never quantized.

Layout: each expert's `gate_proj`, `up_proj` and `down_proj` becomes an `Int8Linear` holding
`weight (out, in) int8` and `weight_scale (out,) float32`, with `weight[o] * weight_scale[o]` the
original row (symmetric, `scale = max|row| / 127`). The state-dict names are the checkpoint's plus
`.weight_scale`, so a quantized model saves and loads under the same names.

The reference matmul (CPU, and any device without a dequant-in-GEMM kernel) dequantizes one expert
at a time inside the expert loop of `moe_ref` (through `DequantizedWeights`), so at most one
expert's full-precision copy exists at any moment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.kernels.moe_int8 import dequantize_int8

EXPERTS_INT8 = "experts_int8"
QUANTIZATION_METHODS = (EXPERTS_INT8,)
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_QMAX = 127.0


def resolve_quantization(quantization: str | None) -> str | None:
    """`None` (no quantization) or a known method name; raises `InvalidRequestError` otherwise."""
    if quantization is None or quantization in ("", "none"):
        return None
    if quantization not in QUANTIZATION_METHODS:
        raise InvalidRequestError(
            f"quantization {quantization!r} is not supported: use one of {', '.join(QUANTIZATION_METHODS)} "
            "or leave it unset"
        )
    return quantization


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a `(out, in)` weight.

    Returns `(q (out, in) int8, scale (out,) float32)` on `weight`'s device, with
    `q.float() * scale[:, None]` within `scale / 2` of `weight` elementwise. Computed in float32
    whatever the input dtype; an all-zero row gets scale 1 (its values are all 0 anyway).
    """
    assert weight.dim() == 2, f"expected a (out, in) weight, got {tuple(weight.shape)}"
    w = weight.float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / _QMAX, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A bias-free linear layer stored as int8 weight + float32 per-output-channel scale.

    Attributes: `weight (out_features, in_features) int8`, `weight_scale (out_features,) float32`,
    both parameters without gradients so the loader fills them like any other tensor.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False
        )
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32), requires_grad=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        """Quantize a `(out, in)` float weight (on its device)."""
        q, scale = quantize_int8(weight)
        with torch.device("meta"):
            layer = cls(weight.shape[1], weight.shape[0])
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        return layer

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int8(self.weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class DequantizedWeights(Sequence[torch.Tensor]):
    """Per-expert weights for `moe_ref`: item `e` is expert `e`'s weight in `dtype`, dequantized
    when asked for. `moe_ref` indexes it only for experts that got tokens, once per matmul, so the
    full-precision copy of one expert lives only for its matmul."""

    def __init__(self, layers: Sequence[nn.Module], dtype: torch.dtype) -> None:
        self.layers = list(layers)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, e: int) -> torch.Tensor:  # type: ignore[override]
        layer = self.layers[e]
        if isinstance(layer, Int8Linear):
            return layer.dequantized(self.dtype)
        return layer.weight

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[e] for e in range(len(self)))


def expert_weights(layers: Sequence[nn.Module], dtype: torch.dtype) -> Sequence[torch.Tensor]:
    """The weights of one projection over all experts: the plain list for float experts, a lazily
    dequantizing `DequantizedWeights` when any expert is `Int8Linear`."""
    if any(isinstance(layer, Int8Linear) for layer in layers):
        return DequantizedWeights(layers, dtype)
    return [layer.weight for layer in layers]


def is_expert_weight(name: str) -> bool:
    """True for a checkpoint name of an MoE expert projection weight, e.g.
    `model.layers.1.feed_forward.experts.3.down_proj.weight`."""
    parts = name.split(".")
    return (
        len(parts) >= 4
        and parts[-1] == "weight"
        and parts[-2] in EXPERT_PROJECTIONS
        and parts[-4] == "experts"
    )


def prepare_experts_int8(model: nn.Module) -> list[str]:
    """Swap every expert projection of `model` (any device, meta included) for an `Int8Linear` of
    the same shape, in place. Returns the names of the swapped weights (`...gate_proj.weight`)."""
    names: list[str] = []
    for module_name, module in list(model.named_modules()):
        for proj in EXPERT_PROJECTIONS:
            child = getattr(module, proj, None)
            full = f"{module_name}.{proj}.weight"
            if not isinstance(child, nn.Linear) or not is_expert_weight(full):
                continue
            device = child.weight.device
            with torch.device(device):
                setattr(module, proj, Int8Linear(child.in_features, child.out_features))
            names.append(full)
    return names


Int8Stack = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""`(w13_q (experts, 2 * inter, hidden) int8, w13_scale (experts, 2 * inter) float32,
w2_q (experts, hidden, inter) int8, w2_scale (experts, hidden) float32)`: what `fused_moe_int8` takes."""


def stack_int8_experts(
    gate: Sequence[Int8Linear], up: Sequence[Int8Linear], down: Sequence[Int8Linear]
) -> Int8Stack:
    """Move one MoE layer's int8 experts into the stacked layout in place: each expert's weight
    and scale become views of four layer-wide buffers, and the separate tensors are freed.

    Costs one extra copy of the layer's int8 experts while it runs (the buffers are filled before
    the old tensors go), never of the whole model. Returns the stacks (see `Int8Stack`)."""
    e, inter, hidden = len(gate), gate[0].out_features, gate[0].in_features
    dev = gate[0].weight.device
    w13 = torch.empty(e, 2 * inter, hidden, dtype=torch.int8, device=dev)
    s13 = torch.empty(e, 2 * inter, dtype=torch.float32, device=dev)
    w2 = torch.empty(e, hidden, inter, dtype=torch.int8, device=dev)
    s2 = torch.empty(e, hidden, dtype=torch.float32, device=dev)
    for x in range(e):
        parts = ((gate[x], w13[x, :inter], s13[x, :inter]), (up[x], w13[x, inter:], s13[x, inter:]),
                 (down[x], w2[x], s2[x]))  # fmt: skip
        for layer, w, sc in parts:
            w.copy_(layer.weight)
            sc.copy_(layer.weight_scale)
            layer.weight = nn.Parameter(w, requires_grad=False)
            layer.weight_scale = nn.Parameter(sc, requires_grad=False)
    return w13, s13, w2, s2


def stacked_int8_view(
    gate: Sequence[nn.Module], up: Sequence[nn.Module], down: Sequence[nn.Module]
) -> Int8Stack | None:
    """The layer's `Int8Stack` as views, when its int8 experts already lie in the stacked layout
    (`stack_int8_experts`); None when any expert is not int8 or not laid out that way."""
    layers = [*gate, *up, *down]
    if not all(isinstance(m, Int8Linear) for m in layers):
        return None
    e, inter, hidden = len(gate), gate[0].out_features, gate[0].in_features

    def base_of(
        first: torch.Tensor, offsets: list[tuple[torch.Tensor, int]], shape: tuple[int, ...]
    ) -> torch.Tensor | None:
        start, size, storage = first.data_ptr(), first.element_size(), first.untyped_storage().data_ptr()
        for t, off in offsets:
            same = t.untyped_storage().data_ptr() == storage
            if not same or t.data_ptr() != start + off * size or not t.is_contiguous():
                return None
        strides = torch.empty(shape, device="meta").stride()
        return first.detach().as_strided(shape, strides, first.storage_offset())

    row13, row2 = 2 * inter * hidden, hidden * inter
    w13 = base_of(
        gate[0].weight,
        [(m.weight, x * row13 + k * inter * hidden) for x in range(e) for k, m in ((0, gate[x]), (1, up[x]))],
        (e, 2 * inter, hidden),
    )
    s13 = base_of(
        gate[0].weight_scale,
        [
            (m.weight_scale, x * 2 * inter + k * inter)
            for x in range(e)
            for k, m in ((0, gate[x]), (1, up[x]))
        ],
        (e, 2 * inter),
    )
    w2 = base_of(down[0].weight, [(down[x].weight, x * row2) for x in range(e)], (e, hidden, inter))
    s2 = base_of(down[0].weight_scale, [(down[x].weight_scale, x * hidden) for x in range(e)], (e, hidden))
    if w13 is None or s13 is None or w2 is None or s2 is None:
        return None
    return w13, s13, w2, s2


def model_quantization(model: nn.Module) -> str | None:
    """`"experts_int8"` when the model's experts are int8, else None."""
    return EXPERTS_INT8 if any(isinstance(m, Int8Linear) for m in model.modules()) else None


def parameter_bytes(model: nn.Module, expert_only: bool = False) -> int:
    """Bytes of the model's parameters (tied ones once); with `expert_only`, of the expert
    projections only (int8 weights and their scales, or the float weights)."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if expert_only and ".experts." not in name:
            continue
        total += p.numel() * p.element_size()
    return total
