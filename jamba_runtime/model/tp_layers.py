"""The collectives tensor and expert parallel add around the model's own layers.

Nothing here repeats layer math: `RowParallelLinear` is a linear layer on this rank's slice of the
input features followed by an all-reduce; `ExpertParallelMoe` routes with the kernels' `route_ref`
and runs this rank's experts, which are the model's own `JambaMLP` modules (float or int8); on the
fast path it runs them through the same grouped kernels as one GPU, on the stacked layout
(`expert_layout.py`), with no host sync, so a decode step captures in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from jamba_runtime.kernels.moe import fused_moe, route_ref
from jamba_runtime.kernels.moe_int8 import fused_moe_int8
from jamba_runtime.model.expert_layout import expert_projections, float_stack_view
from jamba_runtime.model.quantization import stacked_int8_view


@dataclass
class TensorParallelGroup:
    """This process's place in a tensor-parallel group, and the one collective it uses.

    `num_all_reduces` counts calls (tests check one per row-parallel layer and per MoE block)."""

    rank: int
    world_size: int
    group: dist.ProcessGroup | None = None
    cpu_group: dist.ProcessGroup | None = None  # gloo, for host messages; None: `group` is gloo already
    pipes: list[Connection] = field(default_factory=list, compare=False)  # host links to spawned ranks
    num_all_reduces: int = field(default=0, compare=False)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the group, in place; returns `x`. A no-op for one rank."""
        self.num_all_reduces += 1
        if self.world_size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x


class RowParallelLinear(nn.Module):
    """`y = all_reduce(x_local @ W_local^T) + b`: W split along its input features over ranks.

    `weight` is this rank's `(out, in / world_size)` slice; `bias` (full, or None) is added once,
    after the reduction."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, tp: TensorParallelGroup) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class ExpertParallelMoe(nn.Module):
    """Jamba's MoE block with this rank's experts only.

    Every rank holds all tokens (the residual stream is replicated), routes them with the
    replicated router, runs the tokens routed to its own experts and all-reduces the weighted sum:
    one all-reduce per block, and the result equals `moe_ref` over all experts up to summation
    order. `experts` keeps the checkpoint's expert numbers as keys (`experts.5.gate_proj.weight`).
    """

    def __init__(
        self, router: nn.Linear, experts: dict[int, nn.Module], top_k: int, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.router = router
        self.experts = nn.ModuleDict({str(e): m for e, m in experts.items()})
        self.top_k = top_k
        self.tp = tp
        self.first_expert = min(experts)  # a rank owns a contiguous range (`sharding.local_experts`)
        self._float: tuple[torch.Tensor, torch.Tensor] | None = None
        self._int8: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._stack_key: tuple[int, ...] | None = None

    def has_stacks(self) -> bool:
        """Whether this rank's experts lie in the stacked layout the grouped kernels read
        (`expert_layout.stack_experts`; the loader leaves them so). Checked when the weights
        change, kept otherwise."""
        gate, up, down = expert_projections(self.experts)
        key = tuple(m.weight.data_ptr() for m in (*gate, *up, *down))
        if key != self._stack_key:
            self._float = float_stack_view(gate, up, down)
            self._int8 = None if self._float is not None else stacked_int8_view(gate, up, down)
            self._stack_key = key
        return self._float is not None or self._int8 is not None

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """`(tokens, hidden)` -> `(tokens, hidden)`, the whole block's output on every rank.
        `fused` (the fast path) runs the grouped kernels when this rank's experts are stacked
        (`has_stacks`); otherwise a loop over this rank's experts."""
        if fused and self.has_stacks():
            if self._float is not None:
                y = fused_moe(x, self.router.weight, *self._float, self.top_k, self.first_expert)
            else:
                assert self._int8 is not None
                y = fused_moe_int8(x, self.router.weight, *self._int8, self.top_k, self.first_expert)
            return self.tp.all_reduce(y)
        weights, chosen = route_ref(x, self.router.weight, self.top_k)  # (tokens, top_k) each
        out = torch.zeros_like(x)
        for key, expert in self.experts.items():
            token_idx, k_idx = torch.where(chosen == int(key))
            if token_idx.numel():
                h = expert(x[token_idx]) * weights[token_idx, k_idx, None]
                out.index_add_(0, token_idx, h.to(out.dtype))
        return self.tp.all_reduce(out)
