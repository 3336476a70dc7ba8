"""How each Jamba parameter is split over tensor-parallel ranks. Pure functions, no collectives.

One table of rules serves both the memory plan (bytes per GPU) and `shard_model` (the slices each
rank keeps), so the two cannot disagree.

- Attention: `q_proj` / `k_proj` / `v_proj` column-parallel by heads and KV heads; `o_proj`
  row-parallel (its output is all-reduced).
- Mamba: every tensor indexed by `d_inner` channel is split by channel (`in_proj` rows of x and of
  the gate z, `conv1d`, `dt_proj`, `A_log`, `D`); `x_proj` contracts over `d_inner`, so it is
  row-parallel and its small `(dt_rank + 2 * d_state)` output is all-reduced; `out_proj`
  row-parallel. The dt/B/C norms run on the all-reduced x_proj output, replicated.
- Dense MLP: `gate_proj` / `up_proj` column-parallel, `down_proj` row-parallel.
- MoE: the router is replicated; whole experts are spread over ranks (expert parallel), rank `r`
  owning a contiguous range.
- Embeddings, norms and the LM head are replicated.

Row-parallel biases stay whole on every rank: `RowParallelLinear` adds them after the all-reduce.
"""

from __future__ import annotations

import re

import torch

from jamba_runtime.config import JambaConfig
from jamba_runtime.errors import InvalidRequestError

REPLICATED = "replicated"
COLUMN = "column"  # split dim 0 (output features / channels)
COLUMN_XZ = "column_xz"  # Mamba in_proj: rows [x; z], each half split by channel
ROW = "row"  # split dim 1 (input features); bias whole
EXPERT = "expert"  # a whole expert, kept by its owner rank only

_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_RULES: list[tuple[str, str]] = [
    ("self_attn.q_proj.", COLUMN),
    ("self_attn.k_proj.", COLUMN),
    ("self_attn.v_proj.", COLUMN),
    ("self_attn.o_proj.", ROW),
    ("mamba.in_proj.", COLUMN_XZ),
    ("mamba.conv1d.", COLUMN),
    ("mamba.x_proj.", ROW),
    ("mamba.dt_proj.", COLUMN),
    ("mamba.A_log", COLUMN),
    ("mamba.D", COLUMN),
    ("mamba.out_proj.", ROW),
    ("feed_forward.gate_proj.", COLUMN),
    ("feed_forward.up_proj.", COLUMN),
    ("feed_forward.down_proj.", ROW),
]


def shard_rule(name: str) -> str:
    """The rule for a parameter name (checkpoint naming; `.weight_scale` of int8 experts included)."""
    if _EXPERT.search(name):
        return EXPERT
    for marker, rule in _RULES:
        if marker in name:
            return rule
    return REPLICATED


def expert_index(name: str) -> int | None:
    m = _EXPERT.search(name)
    return int(m.group(1)) if m else None


def local_experts(rank: int, num_experts: int, world_size: int) -> range:
    """The contiguous range of experts rank `rank` owns (sizes differ by at most one)."""
    base, extra = divmod(num_experts, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def check_tensor_parallel(config: JambaConfig, world_size: int) -> None:
    """Raise `InvalidRequestError` naming the dimension when `world_size` ranks cannot split it."""
    if not isinstance(world_size, int) or world_size < 1:
        raise InvalidRequestError(f"tensor_parallel_size={world_size!r} is invalid: use a positive integer")
    dims = {
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "mamba_d_inner (mamba_expand * hidden_size)": config.mamba_d_inner,
        "intermediate_size": config.intermediate_size,
    }
    if not config.attention_layers:
        dims.pop("num_attention_heads")
        dims.pop("num_key_value_heads")
    for what, size in dims.items():
        if size % world_size:
            fits = [n for n in range(1, size + 1) if size % n == 0 and n <= 8]
            raise InvalidRequestError(
                f"tensor_parallel_size={world_size} does not divide {what}={size}: use one of {fits}"
            )


def _split(size: int, rank: int, world_size: int) -> slice:
    part = size // world_size
    return slice(rank * part, (rank + 1) * part)


def shard_tensor(
    name: str, tensor: torch.Tensor, rank: int, world_size: int, num_experts: int
) -> torch.Tensor | None:
    """Rank `rank`'s part of parameter `name`; None for an expert the rank does not own.

    Dimensions are assumed divisible (`check_tensor_parallel`). The result is a contiguous copy."""
    rule = shard_rule(name)
    if world_size == 1 or rule == REPLICATED:
        return tensor
    if rule == EXPERT:
        e = expert_index(name)
        assert e is not None
        return tensor if e in local_experts(rank, num_experts, world_size) else None
    if rule == COLUMN:
        return tensor[_split(tensor.shape[0], rank, world_size)].contiguous()
    if rule == COLUMN_XZ:
        x, z = tensor.chunk(2, dim=0)
        s = _split(x.shape[0], rank, world_size)
        return torch.cat([x[s], z[s]], dim=0).contiguous()
    assert rule == ROW
    if tensor.dim() == 1:  # the bias of a row-parallel layer: whole on every rank, added after the sum
        return tensor
    return tensor[:, _split(tensor.shape[1], rank, world_size)].contiguous()


def local_numel(name: str, shape: tuple[int, ...], world_size: int, num_experts: int) -> int:
    """Elements of parameter `name` on the busiest rank (rank 0: it owns the most experts)."""
    numel = 1
    for s in shape:
        numel *= s
    rule = shard_rule(name)
    if world_size == 1 or rule == REPLICATED:
        return numel
    if rule == EXPERT:
        e = expert_index(name)
        return numel if e is not None and e in local_experts(0, num_experts, world_size) else 0
    if rule == ROW and len(shape) == 1:
        return numel
    return numel // world_size
