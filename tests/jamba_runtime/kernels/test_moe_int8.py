"""ExpertsInt8 MoE: the Triton grouped GEMMs with int8 weights against `moe_ref` on the dequantized
weights, and the float32 reference itself.

The reference tests always run (CPU, no triton needed). The kernel tests run where the kernels can
run: on a CUDA device, or on CPU under Triton's interpreter (`TRITON_INTERPRET=1 python -m pytest
tests/jamba_runtime/kernels/test_moe_int8.py`; shapes are kept small because the interpreter executes every
program in Python). The sm_90 compile check runs whenever triton imports and the interpreter is off.

Tolerances: relative Frobenius error `|out - ref| / |ref|`. float32 inputs get exact float32 dots
(`input_precision="ieee"`) and int8 converts to float32 exactly, so 1e-4 holds with a wide margin
(~2e-7 measured); bfloat16 1e-2 (the intermediate `silu(gate) * up` is stored in bfloat16, ~4e-3).
"""

from __future__ import annotations

import math

import pytest
import torch

from jamba_runtime.kernels import moe_int8
from jamba_runtime.kernels.backend import HAS_TRITON, kernel_backend, patch_triton_interpreter
from jamba_runtime.kernels.moe import moe_ref, route_ref
from jamba_runtime.kernels.moe_int8 import dequantize_int8
from jamba_runtime.model.quantization import quantize_int8

if HAS_TRITON:
    import triton

    INTERPRET = bool(
        getattr(getattr(triton, "knobs", None), "runtime", None) and triton.knobs.runtime.interpret
    )
else:
    INTERPRET = False
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
runs_kernels = pytest.mark.skipif(
    not (HAS_TRITON and (INTERPRET or CUDA)),
    reason="needs triton and a CUDA device or TRITON_INTERPRET=1 (set before Python starts)",
)
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
Cfg, Tile = moe_int8.MoeInt8Config, moe_int8.GemmTile

if INTERPRET:
    patch_triton_interpreter()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _experts(experts: int, hidden: int, inter: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random float experts quantized per expert: `(w13_q, w13_scale, w2_q, w2_scale)` on DEVICE."""
    w13 = torch.randn(experts, 2 * inter, hidden, generator=_gen(seed)) * 0.2
    w2 = torch.randn(experts, hidden, inter, generator=_gen(seed + 1)) * 0.15
    q13, s13 = zip(*(quantize_int8(w) for w in w13), strict=True)
    q2, s2 = zip(*(quantize_int8(w) for w in w2), strict=True)
    return tuple(torch.stack(t).to(DEVICE) for t in (q13, s13, q2, s2))


def _moe_ref_dequantized(x: torch.Tensor, router: torch.Tensor, weights: tuple, top_k: int) -> torch.Tensor:
    """`moe_ref` in `x.dtype` on weights dequantized to `x.dtype` (only the experts it indexes)."""
    q13, s13, q2, s2 = weights
    inter = q2.shape[2]

    class Lazy:
        def __init__(self, q: torch.Tensor, s: torch.Tensor) -> None:
            self.q, self.s = q, s

        def __getitem__(self, e: int) -> torch.Tensor:
            return dequantize_int8(self.q[e], self.s[e], x.dtype)

    gate, up = Lazy(q13[:, :inter], s13[:, :inter]), Lazy(q13[:, inter:], s13[:, inter:])
    return moe_ref(x, router, gate, up, Lazy(q2, s2), top_k)  # type: ignore[arg-type]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out64).all(), "non-finite output"
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def _poison() -> None:
    """On CUDA, leave NaN in the caching allocator's free blocks: an output element a kernel never
    writes shows up as NaN rather than as a stale plausible value."""
    if CUDA:
        torch.empty(1 << 22, device=DEVICE).fill_(math.nan)
        torch.cuda.synchronize()


def _inputs(tokens: int, hidden: int, experts: int, dtype: torch.dtype, seed: int) -> tuple:
    x = torch.randn(tokens, hidden, generator=_gen(seed)).to(dtype).to(DEVICE)
    router = torch.randn(experts, hidden, generator=_gen(seed + 1)).to(dtype).to(DEVICE)
    return x, router


def _starved(tokens: int, hidden: int, experts: int, dead: list[int], dtype: torch.dtype) -> tuple:
    """Inputs whose router never picks the experts in `dead`: every token shares a direction the
    dead experts' router rows point away from."""
    v = torch.randn(hidden, generator=_gen(7))
    v = v / v.norm()
    x = torch.randn(tokens, hidden, generator=_gen(8)) + 4 * v
    router = torch.randn(experts, hidden, generator=_gen(9)) * 0.3
    router[dead] = -6 * v
    return x.to(dtype).to(DEVICE), router.to(dtype).to(DEVICE)


# ---- the float32 reference (always runs) -------------------------------------------------------
@pytest.mark.parametrize(
    ("tokens", "hidden", "inter", "experts", "top_k"), [(9, 24, 40, 5, 2), (4, 16, 8, 3, 1)]
)
def test_ref_matches_moe_ref_on_dequantized_weights(
    tokens: int, hidden: int, inter: int, experts: int, top_k: int
) -> None:
    weights = _experts(experts, hidden, inter, seed=1)
    x, router = _inputs(tokens, hidden, experts, torch.float32, seed=2)
    out = moe_int8.fused_moe_int8_ref(x, router, *weights, top_k)
    assert out.dtype == torch.float32 and out.shape == (tokens, hidden)
    assert _rel(out, _moe_ref_dequantized(x, router, weights, top_k)) < 1e-5


def test_ref_bf16_routes_in_bf16_and_returns_bf16() -> None:
    weights = _experts(4, 32, 24, seed=3)
    x, router = _inputs(11, 32, 4, torch.bfloat16, seed=4)
    out = moe_int8.fused_moe_int8_ref(x, router, *weights, 2)
    assert out.dtype == torch.bfloat16
    ref = _moe_ref_dequantized(x.float(), router.float(), weights, 2)
    if torch.equal(route_ref(x, router, 2)[1], route_ref(x.float(), router.float(), 2)[1]):
        assert _rel(out, ref) < 1e-2
    assert _rel(out, _moe_ref_dequantized(x, router, weights, 2)) < 1e-2


def test_ref_never_touches_experts_without_tokens() -> None:
    """NaN scales on the unrouted experts: any use of them would put NaN in the output."""
    dead = [1, 4]
    q13, s13, q2, s2 = _experts(6, 32, 16, seed=5)
    s13[dead], s2[dead] = math.nan, math.nan
    x, router = _starved(10, 32, 6, dead, torch.float32)
    assert not torch.isin(route_ref(x, router, 2)[1], torch.tensor(dead, device=DEVICE)).any()
    out = moe_int8.fused_moe_int8_ref(x, router, q13, s13, q2, s2, 2)
    assert torch.isfinite(out).all()


def test_cpu_dispatch_runs_the_reference() -> None:
    weights = [t.cpu() for t in _experts(3, 16, 8, seed=6)]
    x = torch.randn(5, 16, generator=_gen(10))
    router = torch.randn(3, 16, generator=_gen(11))
    with kernel_backend("auto"):
        out = moe_int8.fused_moe_int8(x, router, *weights, 2)
    assert torch.equal(out, moe_int8.fused_moe_int8_ref(x, router, *weights, 2))


def test_padded_rows_bound_and_config_classes() -> None:
    # One token, top-2: two experts with one row each, each padded to a 16-row block.
    assert moe_int8.padded_rows_bound(2, 16, 16) == 32
    # More experts than pairs: only the pairs' experts can pad.
    assert moe_int8.padded_rows_bound(3, 64, 16) == 48
    assert moe_int8.padded_rows_bound(16384, 16, 128) == 16384 + 16 * 128
    assert moe_int8.pick_config(2, 16).block_m == 16  # decode
    assert moe_int8.pick_config(128, 16).block_m == 16  # 64 tokens top-2: 8 rows per expert
    assert moe_int8.pick_config(16384, 16).block_m == 128  # 8192-token prefill


# ---- Triton kernels ----------------------------------------------------------------------------
TINY = Cfg(16, Tile(16, 16), Tile(16, 16), group_m=2)
CASES = {
    # tokens, hidden, inter, experts, top_k, config (None: pick_config's)
    "odd_tokens_uneven_k": (7, 40, 24, 5, 2, TINY),
    "decode_default_tiles": (1, 48, 80, 4, 2, None),
    "top1_even_k": (13, 64, 32, 6, 1, Cfg(16, Tile(32, 32), Tile(32, 32), group_m=4)),
    "several_blocks_per_expert": (33, 24, 56, 3, 2, Cfg(16, Tile(32, 16), Tile(16, 32), group_m=8)),
}


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_moe_int8_matches_moe_ref(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens, hidden, inter, experts, top_k, cfg = CASES[case]
    monkeypatch.setattr(moe_int8, "CONFIG_OVERRIDE", cfg)
    weights = _experts(experts, hidden, inter, seed=20)
    x, router = _inputs(tokens, hidden, experts, dtype, seed=21)
    _poison()
    with kernel_backend("triton"):
        out = moe_int8.fused_moe_int8(x, router, *weights, top_k)
    assert out.dtype == dtype and out.shape == (tokens, hidden)
    # Same dtype for both routings: they pick the same experts even at near-ties.
    ref = _moe_ref_dequantized(x, router, weights, top_k)
    assert _rel(out, ref) < TOL[dtype]
    assert _rel(out, moe_int8.fused_moe_int8_ref(x, router, *weights, top_k)) < TOL[dtype]


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_experts_without_tokens_are_never_read(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Experts 0, 3 and 5 get no token and hold NaN scales: a program that touched them would put
    NaN into the output (or read an expert's rows for another's)."""
    monkeypatch.setattr(moe_int8, "CONFIG_OVERRIDE", TINY)
    dead = [0, 3, 5]
    q13, s13, q2, s2 = _experts(6, 32, 24, seed=30)
    s13[dead], s2[dead] = math.nan, math.nan
    x, router = _starved(9, 32, 6, dead, dtype)
    assert not torch.isin(route_ref(x, router, 2)[1], torch.tensor(dead, device=DEVICE)).any()
    _poison()
    with kernel_backend("triton"):
        out = moe_int8.fused_moe_int8(x, router, q13, s13, q2, s2, 2)
    assert _rel(out, _moe_ref_dequantized(x, router, (q13, s13, q2, s2), 2)) < TOL[dtype]


@runs_kernels
@pytest.mark.parametrize("block_m", [16, 4])
def test_align_pairs_groups_rows_by_expert(block_m: int) -> None:
    experts, tokens, top_k = 7, 23, 2
    chosen = torch.stack([torch.randperm(experts, generator=_gen(40 + t))[:top_k] for t in range(tokens)])
    chosen[chosen == 2] = 6  # expert 2 gets no rows (6 may appear twice for a token: still fine)
    pairs = tokens * top_k
    with kernel_backend("triton"):
        sorted_ids, padded_end = moe_int8.align_pairs(chosen.to(DEVICE), experts, block_m)
    sorted_ids, padded_end, flat = sorted_ids.cpu(), padded_end.cpu(), chosen.reshape(-1)
    counts = torch.bincount(flat, minlength=experts)
    want_end = torch.cumsum((counts + block_m - 1) // block_m * block_m, 0)
    assert padded_end.tolist() == want_end.tolist()
    assert sorted_ids.numel() == moe_int8.padded_rows_bound(pairs, experts, block_m)
    start = 0
    for e in range(experts):
        rows = sorted_ids[start : int(padded_end[e])].tolist()
        real = [r for r in rows if r < pairs]
        # Stable: the expert's pairs in their original order, then only sentinels.
        assert real == torch.nonzero(flat == e).flatten().tolist()
        assert rows[len(real) :] == [pairs] * (len(rows) - len(real))
        start = int(padded_end[e])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_replay_equals_eager() -> None:
    weights = _experts(4, 256, 128, seed=50)
    x, router = _inputs(3, 256, 4, torch.bfloat16, seed=51)
    eager = moe_int8.fused_moe_int8(x, router, *weights, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        moe_int8.fused_moe_int8(x, router, *weights, 2)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = moe_int8.fused_moe_int8(x, router, *weights, 2)
    x.copy_(torch.randn(x.shape, generator=_gen(52)).to(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, moe_int8.fused_moe_int8(x, router, *weights, 2))
    assert not torch.equal(static_out, eager)


_SIG = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.int8: "i8",
}


class _CompileOnly:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args)` compiles it for sm_90 with the
    argument types of the call, and the launcher's 16-divisibility hints for tensors and for
    integers that are multiples of 16 (without them Triton cannot pipeline the loads), instead of
    launching it. Records `(name, BLOCK_M, shared bytes, ttgir)`."""

    def __init__(self, fn, log: list[tuple]) -> None:  # noqa: ANN001 - a triton JITFunction
        self.fn, self.log = fn, log

    def __getitem__(self, grid: tuple):  # noqa: ANN204
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        def launch(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            sig, consts, attrs = {}, {}, {}
            for i, p in enumerate(self.fn.params):
                v = kwargs[p.name] if p.name in kwargs else args[i]
                if p.is_constexpr:
                    sig[p.name], consts[(i,)] = "constexpr", v
                    continue
                sig[p.name] = "*" + _SIG[v.dtype] if isinstance(v, torch.Tensor) else "i32"
                if isinstance(v, torch.Tensor) or v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            src = ASTSource(self.fn, signature=sig, constexprs=consts, attrs=attrs)
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            self.log.append(
                (self.fn.__name__, kwargs["BLOCK_M"], kernel.metadata.shared, kernel.asm["ttgir"])
            )

        return launch


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason="needs triton, without the interpreter")
def test_kernels_compile_for_hopper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each size class's tiles at the Jamba-1.5-Mini shape compile for sm_90 within its shared
    memory, with the weight loads software-pipelined (async copies) and, for prefill, wgmma.
    CPU tensors only carry the argument types; the 2.8 GB of int8 weights are meta tensors."""
    log: list[tuple] = []
    for name in ("_align_kernel", "_gate_up_kernel", "_down_kernel"):
        monkeypatch.setattr(moe_int8, name, _CompileOnly(getattr(moe_int8, name), log))
    experts, hidden, inter = 16, 4096, 14336
    w13_q = torch.empty(experts, 2 * inter, hidden, dtype=torch.int8, device="meta")
    w2_q = torch.empty(experts, hidden, inter, dtype=torch.int8, device="meta")
    s13, s2 = torch.ones(experts, 2 * inter), torch.ones(experts, hidden)
    router = torch.randn(experts, hidden, dtype=torch.bfloat16)
    with kernel_backend("triton"):
        for tokens in (1, 512, 8192):
            x = torch.randn(tokens, hidden, dtype=torch.bfloat16)
            moe_int8.fused_moe_int8(x, router, w13_q, s13, w2_q, s2, 2)
    assert [(name, bm) for name, bm, _, _ in log] == [
        (n, bm) for bm in (16, 64, 128) for n in ("_align_kernel", "_gate_up_kernel", "_down_kernel")
    ]
    for name, block_m, shared, ttgir in log:
        assert shared <= 227 * 1024, f"{name} BLOCK_M={block_m}: {shared} bytes of shared memory"
        if name != "_align_kernel":
            assert "async_copy_global_to_local" in ttgir, f"{name} BLOCK_M={block_m}: loads not pipelined"
        if name != "_align_kernel" and block_m >= 64:
            assert "warp_group_dot" in ttgir, f"{name} BLOCK_M={block_m}: no wgmma"
