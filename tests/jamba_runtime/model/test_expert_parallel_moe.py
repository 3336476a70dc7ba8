"""Expert parallel through the grouped MoE kernels: a rank holding experts `[first, first + n)`
routes every token over all experts and adds only its own experts' share, so the ranks' outputs
sum to the whole block's. Checked for the grouped matmul (CPU `torch._grouped_mm`), both
references, the int8 Triton kernel (CUDA, or `TRITON_INTERPRET=1`), and `ExpertParallelMoe`'s fast
path against its own expert loop."""

from __future__ import annotations

import pytest
import torch

from jamba_runtime.kernels import moe_int8
from jamba_runtime.kernels.backend import HAS_TRITON, kernel_backend, patch_triton_interpreter
from jamba_runtime.kernels.moe import HAS_GROUPED_MM, fused_moe_ref, grouped_experts, route_ref
from jamba_runtime.model.expert_layout import quantize_experts_int8, stack_experts
from jamba_runtime.model.modeling import JambaMLP
from jamba_runtime.model.quantization import quantize_int8
from jamba_runtime.model.tp_layers import ExpertParallelMoe, TensorParallelGroup

EXPERTS, HIDDEN, INTER, TOP_K, TOKENS = 6, 16, 8, 2, 11
SPLITS = [(0, 3), (3, 6)]  # two ranks' expert ranges
UNEVEN = [(0, 1), (1, 4), (4, 6)]


def _float(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(TOKENS, HIDDEN, generator=g)
    router = torch.randn(EXPERTS, HIDDEN, generator=g)
    w13 = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) / 4
    w2 = torch.randn(EXPERTS, HIDDEN, INTER, generator=g) / 3
    return x, router, w13, w2


@pytest.mark.parametrize("splits", [SPLITS, UNEVEN])
def test_reference_shares_sum_to_the_whole_block(splits: list[tuple[int, int]]) -> None:
    x, router, w13, w2 = _float()
    whole = fused_moe_ref(x, router, w13, w2, TOP_K)
    parts = sum(fused_moe_ref(x, router, w13[a:b], w2[a:b], TOP_K, first_expert=a) for a, b in splits)
    torch.testing.assert_close(parts, whole)
    assert not torch.equal(fused_moe_ref(x, router, w13[:3], w2[:3], TOP_K), whole), (
        "a share is not the whole"
    )


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="torch without _grouped_mm")
@pytest.mark.parametrize("splits", [SPLITS, UNEVEN])
def test_grouped_matmul_shares_sum_to_the_whole_block(splits: list[tuple[int, int]]) -> None:
    x, router, w13, w2 = _float(1)
    weights, chosen = route_ref(x, router, TOP_K)
    whole = fused_moe_ref(x, router, w13, w2, TOP_K)
    torch.testing.assert_close(grouped_experts(x, weights, chosen, w13, w2), whole, rtol=1e-4, atol=1e-5)
    parts = [grouped_experts(x, weights, chosen, w13[a:b], w2[a:b], a) for a, b in splits]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-4, atol=1e-5)
    # A rank whose experts got no token at all returns exact zeros (not uncomputed rows).
    elsewhere = torch.where(chosen == 0, 1, chosen)  # no pair routed to expert 0
    assert torch.equal(grouped_experts(x, weights, elsewhere, w13[:1], w2[:1], 0), torch.zeros_like(x))


def _int8(w13: torch.Tensor, w2: torch.Tensor, device: str) -> tuple[torch.Tensor, ...]:
    q13, s13 = zip(*(quantize_int8(w) for w in w13), strict=True)
    q2, s2 = zip(*(quantize_int8(w) for w in w2), strict=True)
    return tuple(torch.stack(t).to(device) for t in (q13, s13, q2, s2))


def test_int8_reference_shares_sum_to_the_whole_block() -> None:
    x, router, w13, w2 = _float(2)
    q13, s13, q2, s2 = _int8(w13, w2, "cpu")
    whole = moe_int8.fused_moe_int8_ref(x, router, q13, s13, q2, s2, TOP_K)
    parts = sum(
        moe_int8.fused_moe_int8_ref(x, router, q13[a:b], s13[a:b], q2[a:b], s2[a:b], TOP_K, first_expert=a)
        for a, b in UNEVEN
    )
    torch.testing.assert_close(parts, whole)


_INTERPRET = (
    HAS_TRITON
    and bool(getattr(getattr(__import__("triton"), "knobs", None), "runtime", None))
    and (__import__("triton").knobs.runtime.interpret)
)

if _INTERPRET:
    patch_triton_interpreter()


@pytest.mark.skipif(
    not (HAS_TRITON and (torch.cuda.is_available() or _INTERPRET)),
    reason="needs triton and a CUDA device or TRITON_INTERPRET=1",
)
def test_int8_kernel_shares_sum_to_the_whole_block(monkeypatch: pytest.MonkeyPatch) -> None:
    device = "cuda" if torch.cuda.is_available() and not _INTERPRET else "cpu"
    monkeypatch.setattr(
        moe_int8,
        "CONFIG_OVERRIDE",
        moe_int8.MoeInt8Config(16, moe_int8.GemmTile(16, 16, 4, 1), moe_int8.GemmTile(16, 16, 4, 1)),
    )
    x, router, w13, w2 = (t.to(device) for t in _float(3))
    q13, s13, q2, s2 = _int8(w13, w2, device)
    with kernel_backend("triton"):
        whole = moe_int8.fused_moe_int8(x, router, q13, s13, q2, s2, TOP_K)
        if device == "cuda":  # poison freed memory: a row the kernel never wrote shows up as NaN
            torch.empty(1 << 22, device=device).fill_(float("nan"))
        parts = [
            moe_int8.fused_moe_int8(x, router, q13[a:b], s13[a:b], q2[a:b], s2[a:b], TOP_K, first_expert=a)
            for a, b in UNEVEN
        ]
    assert all(torch.isfinite(p).all() for p in parts)
    torch.testing.assert_close(sum(parts), whole, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("int8", [False, True])
def test_expert_parallel_moe_fast_path_equals_its_expert_loop(int8: bool) -> None:
    x, router, w13, w2 = _float(4)
    first, last = 2, 5
    experts = {}
    for e in range(first, last):
        mlp = JambaMLP(HIDDEN, INTER)
        mlp.gate_proj.weight.data, mlp.up_proj.weight.data = w13[e, :INTER].clone(), w13[e, INTER:].clone()
        mlp.down_proj.weight.data = w2[e].clone()
        experts[e] = mlp
    gate = torch.nn.Linear(HIDDEN, EXPERTS, bias=False)
    gate.weight.data = router
    block = ExpertParallelMoe(gate, experts, TOP_K, TensorParallelGroup(0, 1))
    assert not block.has_stacks(), "separate tensors: the fast path falls back to the loop"
    if int8:
        quantize_experts_int8(block)  # quantizes, then lays the int8 experts out stacked
    else:
        assert stack_experts(block) == 1
    assert block.has_stacks()
    loop = block(x)
    torch.testing.assert_close(block(x, fused=True), loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(block(x), loop, rtol=1e-4, atol=1e-5)
