"""Triton kernels against their float32 PyTorch references.

Runs where the kernels can run: on a CUDA device (`python -m pytest -q
tests/jamba_runtime/kernels/test_kernels_triton.py`), or on CPU under Triton's interpreter
(`TRITON_INTERPRET=1 python -m pytest ...`; shapes are kept small because the interpreter executes
every program in Python). Without either, only the sm_90 compile check and the dispatch tests run;
without `triton`, the file is skipped.

Tolerances: relative Frobenius error `|out - ref| / |ref|` against the float32 reference computed
from the same (upcast) inputs: 1e-4 for float32 inputs, 1e-2 for bfloat16 (its 8-bit mantissa gives
~4e-3 per rounding). Every output must be finite, and slots a call does not name must not change.
"""

# ruff: noqa: E402 - the kernel modules are imported only once triton is known to import
from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from jamba_runtime.kernels import attention as attn
from jamba_runtime.kernels import causal_conv1d as conv
from jamba_runtime.kernels import moe, rmsnorm
from jamba_runtime.kernels import selective_scan as scan
from jamba_runtime.kernels.backend import (
    KernelBackendError,
    kernel_backend,
    patch_triton_interpreter,
    set_kernel_backend,
)

INTERPRET = bool(getattr(getattr(triton, "knobs", None), "runtime", None) and triton.knobs.runtime.interpret)
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
runs_kernels = pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="needs a CUDA device or TRITON_INTERPRET=1 (set before Python starts)"
)
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


if INTERPRET:
    patch_triton_interpreter()


@pytest.fixture(autouse=True)
def _triton_backend():
    """Every test runs the Triton path (the reference is called explicitly), with the CUDA
    references in true float32: cuDNN's default TF32 convolutions would put ~1e-3 of error into
    the conv reference itself."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with kernel_backend("triton"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed)) * scale).to(dtype).to(DEVICE)


def _check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out64).all(), f"{what}: non-finite output"
    err = ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()
    assert err < TOL[dtype], f"{what}: relative error {err:.2e} over {TOL[dtype]:.0e}"


def _poison() -> None:
    """On CUDA, leave NaN in the caching allocator's free blocks, so an output element a kernel
    never writes shows up as NaN rather than as a stale plausible value."""
    if CUDA:
        torch.empty(1 << 22, device=DEVICE).fill_(math.nan)
        torch.cuda.synchronize()


# ---- RMSNorm ------------------------------------------------------------------------------------
@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 128), (5, 16)])
def test_rms_norm(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x, r = _randn(*shape, dtype=dtype, seed=1), _randn(*shape, dtype=dtype, seed=2)
    w = _randn(shape[-1], dtype=dtype, seed=3)
    _poison()
    _check(rmsnorm.rms_norm(x, w, 1e-6), rmsnorm.rms_norm_ref(x.float(), w.float(), 1e-6), dtype, "rms_norm")
    normed, summed = rmsnorm.fused_add_rms_norm(x, r, w, 1e-6)
    ref_normed, ref_sum = rmsnorm.fused_add_rms_norm_ref(x.float(), r.float(), w.float(), 1e-6)
    _check(summed, ref_sum, dtype, "residual sum")
    _check(normed, ref_normed, dtype, "fused_add_rms_norm")


# ---- causal conv1d ------------------------------------------------------------------------------
@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d_conv", [4, 2])
def test_causal_conv1d_padded(dtype: torch.dtype, d_conv: int) -> None:
    lens, d_inner = [9, 1, 4], 37
    x = _randn(3, d_inner, max(lens), dtype=dtype, seed=4)
    w, b = _randn(d_inner, d_conv, dtype=dtype, seed=5), _randn(d_inner, dtype=dtype, seed=6)
    state = _randn(3, d_inner, d_conv - 1, dtype=dtype, seed=7)
    ql = torch.tensor(lens, device=DEVICE)
    _poison()
    out, new_state = conv.causal_conv1d(x, w, b, state, ql)
    ref, ref_state = conv.causal_conv1d_ref(x.float(), w.float(), b.float(), state.float(), ql)
    _check(out, ref, dtype, "conv out")  # padded positions too: both compute them from the zeros
    _check(new_state, ref_state, dtype, "conv state")


def _conv_varlen_case(dtype: torch.dtype) -> tuple:
    lens, d_inner, d_conv, slots = [5, 1, 2, 7], 19, 4, 6
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEVICE)
    x = _randn(sum(lens), d_inner, dtype=dtype, seed=8)
    w, b = _randn(d_inner, d_conv, dtype=dtype, seed=9), _randn(d_inner, dtype=dtype, seed=10)
    states = _randn(slots, d_inner, d_conv - 1, dtype=dtype, seed=11)
    idx = torch.tensor([4, 0, 2, 5], device=DEVICE)
    init = torch.tensor([True, False, True, False], device=DEVICE)
    return x, w, b, states, cu, idx, init


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_conv1d_varlen(dtype: torch.dtype) -> None:
    x, w, b, states, cu, idx, init = _conv_varlen_case(dtype)
    ref_states = states.float().clone()
    with kernel_backend("reference"):
        ref = conv.causal_conv1d_varlen(x.float(), w.float(), b.float(), ref_states, cu, idx, init)
    _poison()
    got_states = states.clone()
    out = conv.causal_conv1d_varlen(x, w, b, got_states, cu, idx, init)
    _check(out, ref, dtype, "conv varlen out")
    _check(got_states, ref_states, dtype, "conv varlen states")
    untouched = [1, 3]
    assert torch.equal(got_states[untouched], states[untouched]), "slots not in the batch changed"


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_conv1d_update(dtype: torch.dtype) -> None:
    _, w, b, states, _, _, _ = _conv_varlen_case(dtype)
    x = _randn(3, states.shape[1], dtype=dtype, seed=12)
    idx = torch.tensor([3, -1, 1], device=DEVICE)  # -1: a padding row, skipped
    ref_states = states.float().clone()
    with kernel_backend("reference"):
        ref = conv.causal_conv1d_update(x.float(), w.float(), b.float(), ref_states, idx)
    got_states = states.clone()
    out = conv.causal_conv1d_update(x, w, b, got_states, idx)
    _check(out[[0, 2]], ref[[0, 2]], dtype, "conv update out")
    _check(got_states, ref_states, dtype, "conv update states")
    assert torch.equal(got_states[[0, 2, 4, 5]], states[[0, 2, 4, 5]]), "slots not in the batch changed"


# ---- selective scan -----------------------------------------------------------------------------
def _scan_inputs(dtype: torch.dtype, tokens: int, d_inner: int, d_state: int, seed: int) -> dict:
    """Packed `(tokens, ...)` inputs with realistic ranges: dt around softplus(-2..1), A = -exp(.)."""
    return {
        "x": _randn(tokens, d_inner, dtype=dtype, seed=seed),
        "dt": _randn(tokens, d_inner, dtype=dtype, seed=seed + 1, scale=0.5),
        "A": -torch.exp(_randn(d_inner, d_state, dtype=torch.float32, seed=seed + 2, scale=0.5)),
        "B": _randn(tokens, d_state, dtype=dtype, seed=seed + 3),
        "C": _randn(tokens, d_state, dtype=dtype, seed=seed + 4),
        "D": _randn(d_inner, dtype=torch.float32, seed=seed + 5),
        "z": _randn(tokens, d_inner, dtype=dtype, seed=seed + 6),
        "dt_bias": _randn(d_inner, dtype=dtype, seed=seed + 7, scale=0.5) - 1.0,
    }


def _f32(d: dict) -> dict:
    return {k: v.float() for k, v in d.items()}


@pytest.fixture(params=["chunked", "sequential", "sequential-segments"])
def scan_variant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both prefill scan kernels; `sequential-segments` cuts sequences into segments of 2 tokens
    (one warp, so 32 channels a program), so that both passes and the segment combine run."""
    monkeypatch.setattr(scan, "SCAN_VARIANT", request.param.split("-")[0])
    if request.param == "sequential-segments":
        monkeypatch.setattr(scan, "SEQ_TILES", (1, 2, 1))
    return request.param


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d_state", [4, 16])
def test_selective_scan_padded(dtype: torch.dtype, d_state: int, scan_variant: str) -> None:
    lens, d_inner = ([9, 1, 6], 6) if d_state == 4 else ([5, 2], 5)
    batch, length = len(lens), max(lens)
    p = _scan_inputs(dtype, batch * length, d_inner, d_state, seed=20)

    def chan(t: torch.Tensor) -> torch.Tensor:  # (batch * L, d) -> (batch, d, L)
        return t.view(batch, length, -1).transpose(1, 2)

    args = dict(x=chan(p["x"]), dt=chan(p["dt"]), z=chan(p["z"]), A=p["A"], D=p["D"], dt_bias=p["dt_bias"])
    args.update(B=p["B"].view(batch, length, -1), C=p["C"].view(batch, length, -1))
    state = _randn(batch, d_inner, d_state, dtype=torch.float32, seed=30)
    mask = torch.arange(length, device=DEVICE)[None, :] < torch.tensor(lens, device=DEVICE)[:, None]
    _poison()
    y, new_state = scan.selective_scan(**args, ssm_state=state, mask=mask)
    ref_y, ref_state = scan.selective_scan_ref(**_f32(args), ssm_state=state, mask=mask)
    _check(y, ref_y, dtype, "scan y")  # padded steps too: dt = 0 there in both
    _check(new_state, ref_state, dtype, "scan state")


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_scan_varlen(dtype: torch.dtype, scan_variant: str) -> None:
    lens, d_inner, d_state = [7, 1, 3], 6, 4
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEVICE)
    p = _scan_inputs(dtype, sum(lens), d_inner, d_state, seed=40)
    states = _randn(5, d_inner, d_state, dtype=torch.float32, seed=41)
    idx = torch.tensor([3, 0, 4], device=DEVICE)
    init = torch.tensor([True, False, True], device=DEVICE)
    ref_states = states.clone()
    with kernel_backend("reference"):
        ref = scan.selective_scan_varlen(**_f32(p), ssm_states=ref_states, cu_seqlens=cu, state_indices=idx,
                                         has_initial_state=init)  # fmt: skip
    _poison()
    got_states = states.clone()
    y = scan.selective_scan_varlen(**p, ssm_states=got_states, cu_seqlens=cu, state_indices=idx,
                                   has_initial_state=init)  # fmt: skip
    _check(y, ref, dtype, "scan varlen y")
    _check(got_states, ref_states, dtype, "scan varlen states")
    assert torch.equal(got_states[[1, 2]], states[[1, 2]]), "slots not in the batch changed"


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_state_update(dtype: torch.dtype) -> None:
    d_inner, d_state = 37, 16
    p = _scan_inputs(dtype, 3, d_inner, d_state, seed=50)
    states = _randn(4, d_inner, d_state, dtype=torch.float32, seed=51)
    idx = torch.tensor([2, -1, 0], device=DEVICE)
    ref_states = states.clone()
    with kernel_backend("reference"):
        ref = scan.selective_state_update(ref_states, state_indices=idx, **_f32(p))
    got_states = states.clone()
    y = scan.selective_state_update(got_states, state_indices=idx, **p)
    _check(y[[0, 2]], ref[[0, 2]], dtype, "state update y")
    _check(got_states, ref_states, dtype, "state update states")


# ---- attention ----------------------------------------------------------------------------------
@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_padded(dtype: torch.dtype) -> None:
    batch, heads, kv_heads, head_dim, lq = 3, 4, 2, 24, 7
    ctx = torch.tensor([5, 0, 17], device=DEVICE)
    lk = int(ctx.max()) + lq
    q = _randn(batch, heads, lq, head_dim, dtype=dtype, seed=60)
    k = _randn(batch, kv_heads, lk, head_dim, dtype=dtype, seed=61)
    v = _randn(batch, kv_heads, lk, head_dim, dtype=dtype, seed=62)
    _poison()
    out = attn.attention(q, k, v, ctx, head_dim**-0.5)
    _check(out, attn.attention_ref(q.float(), k.float(), v.float(), ctx, head_dim**-0.5), dtype, "attention")


def _paged_case(dtype: torch.dtype, block_size: int, totals: list[int], seed: int) -> tuple:
    """A shuffled block pool and each sequence's table covering `totals[b]` keys."""
    kv_heads, head_dim = 2, 32
    nblocks = sum(-(-t // block_size) for t in totals) + 3
    k_cache = _randn(nblocks * block_size, kv_heads, head_dim, dtype=dtype, seed=seed)
    v_cache = _randn(nblocks * block_size, kv_heads, head_dim, dtype=dtype, seed=seed + 1)
    perm = torch.randperm(nblocks, generator=_gen(seed + 2)).tolist()
    width = max(-(-t // block_size) for t in totals)
    tables, used = [], 0
    for t in totals:
        n = -(-t // block_size)
        tables.append(perm[used : used + n] + [0] * (width - n))
        used += n
    return k_cache, v_cache, torch.tensor(tables, device=DEVICE)


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_attention_prefill(dtype: torch.dtype, block_size: int) -> None:
    q_lens, ctx = [3, 1, 6], [5, 0, 9]
    k_cache, v_cache, tables = _paged_case(
        dtype, block_size, [a + b for a, b in zip(q_lens, ctx, strict=True)], seed=70
    )
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], device=DEVICE)
    q = _randn(sum(q_lens), 6, 32, dtype=dtype, seed=73)  # 6 query heads over 2 KV heads
    ctx_t = torch.tensor(ctx, device=DEVICE)
    _poison()
    out = attn.paged_attention_prefill(
        q, k_cache, v_cache, tables, cu, ctx_t, block_size, 32**-0.5, max(q_lens)
    )
    ref = attn.paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), tables, cu, ctx_t, block_size,
                                   32**-0.5)  # fmt: skip
    _check(out, ref, dtype, "paged prefill")


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_prefill_after_a_long_prefix(dtype: torch.dtype) -> None:
    """Prefixes longer than several key tiles: whole tiles below the causal diagonal take the
    kernel's unmasked loop, the rest the masked one; query runs span more than one query tile."""
    q_lens, ctx = [70, 3, 33], [100, 131, 0]
    k_cache, v_cache, tables = _paged_case(
        dtype, 16, [a + b for a, b in zip(q_lens, ctx, strict=True)], seed=75
    )
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], device=DEVICE)
    q = _randn(sum(q_lens), 4, 32, dtype=dtype, seed=76)  # 4 query heads over 2 KV heads
    ctx_t = torch.tensor(ctx, device=DEVICE)
    _poison()
    out = attn.paged_attention_prefill(q, k_cache, v_cache, tables, cu, ctx_t, 16, 32**-0.5, max(q_lens))
    ref = attn.paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), tables, cu, ctx_t, 16,
                                   32**-0.5)  # fmt: skip
    _check(out, ref, dtype, "paged prefill, long prefix")


@pytest.mark.skipif(not CUDA, reason="the SDPA route is taken on CUDA only")
def test_paged_attention_prefill_sends_long_chunks_to_sdpa() -> None:
    """A step with one chunk past `SDPA_MIN_QUERY` (SDPA over its gathered keys) beside short
    ones (the Triton kernel, the long row's programs skipped): every row as the reference."""
    q_lens, ctx = [5, attn.SDPA_MIN_QUERY + 37, 1], [40, 300, 9]
    k_cache, v_cache, tables = _paged_case(
        torch.bfloat16, 16, [a + b for a, b in zip(q_lens, ctx, strict=True)], seed=77
    )
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], device=DEVICE)
    q = _randn(sum(q_lens), 8, 64, dtype=torch.bfloat16, seed=78)
    k_cache, v_cache = (t.repeat(1, 1, 2) for t in (k_cache, v_cache))  # head_dim 64: a flash size
    ctx_t = torch.tensor(ctx, device=DEVICE)
    _poison()
    out = attn.paged_attention_prefill(q, k_cache, v_cache, tables, cu, ctx_t, 16, 64**-0.5, max(q_lens),
                                       host_lens=(tuple(q_lens), tuple(ctx)))  # fmt: skip
    ref = attn.paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), tables, cu, ctx_t, 16,
                                   64**-0.5)  # fmt: skip
    _check(out, ref, torch.bfloat16, "paged prefill via SDPA")
    for b in range(3):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        _check(out[rows], ref[rows], torch.bfloat16, f"sequence {b}")


@runs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_decode(dtype: torch.dtype) -> None:
    seq_lens = [8, 1, 100]  # 100 keys: split over several programs, then combined
    k_cache, v_cache, tables = _paged_case(dtype, 16, seq_lens, seed=80)
    q = _randn(3, 8, 32, dtype=dtype, seed=83)  # 8 query heads over 2 KV heads
    lens = torch.tensor(seq_lens, device=DEVICE)
    _poison()
    out = attn.paged_attention_decode(q, k_cache, v_cache, tables, lens, 16, 32**-0.5, max(seq_lens))
    cu = torch.arange(4, device=DEVICE)
    ref = attn.paged_attention_ref(
        q.float(), k_cache.float(), v_cache.float(), tables, cu, lens - 1, 16, 32**-0.5
    )
    _check(out, ref, dtype, "paged decode")


@runs_kernels
def test_paged_attention_decode_bound_far_above_the_lengths_and_padding_rows() -> None:
    """A captured decode graph launches with the engine's longest context as the bound and pads
    the batch with zero-length rows: each sequence still splits its own keys, and a padding row
    comes out as zeros."""
    seq_lens = [8, 1, 100, 0]
    k_cache, v_cache, tables = _paged_case(torch.float32, 16, [8, 1, 100, 1], seed=81)
    q = _randn(4, 8, 32, dtype=torch.float32, seed=84)
    lens = torch.tensor(seq_lens, device=DEVICE)
    _poison()
    out = attn.paged_attention_decode(q, k_cache, v_cache, tables, lens, 16, 32**-0.5, 262_144)
    cu = torch.arange(4, device=DEVICE)
    ref = attn.paged_attention_ref(
        q[:3].float(), k_cache.float(), v_cache.float(), tables[:3], cu, lens[:3] - 1, 16, 32**-0.5
    )
    _check(out[:3], ref, torch.float32, "paged decode, large bound")
    assert torch.equal(out[3], torch.zeros_like(out[3]))


# ---- MoE ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_moe_matches_expert_loop(dtype: torch.dtype) -> None:
    """Grouped matmuls (torch._grouped_mm) vs the per-expert loop; both route with the same
    `route_ref` in the same dtype, so they pick the same experts. Runs on CPU too."""
    if not moe.HAS_GROUPED_MM:
        pytest.skip("this torch has no _grouped_mm")
    experts, hidden, inter, tokens = 5, 24, 40, 13
    x = _randn(tokens, hidden, dtype=dtype, seed=90)
    router = _randn(experts, hidden, dtype=dtype, seed=91)
    gate = [_randn(inter, hidden, dtype=dtype, seed=100 + e, scale=0.2) for e in range(experts)]
    up = [_randn(inter, hidden, dtype=dtype, seed=200 + e, scale=0.2) for e in range(experts)]
    down = [_randn(hidden, inter, dtype=dtype, seed=300 + e, scale=0.15) for e in range(experts)]
    w13, w2 = moe.stack_expert_weights(gate, up, down)
    _poison()
    out = moe.fused_moe(x, router, w13, w2, 2)
    ref = moe.moe_ref(x.float(), router.float(), [g.float() for g in gate], [u.float() for u in up],
                      [d.float() for d in down], 2)  # fmt: skip
    if dtype == torch.bfloat16:
        # Routing in bf16 may differ from float32 at near-ties: compare with the same routing.
        ref = moe.moe_ref(x, router, gate, up, down, 2).float()
    _check(out, ref, dtype, "fused_moe")


# ---- dispatch and compilation ------------------------------------------------------------------
def test_cpu_dispatch_runs_the_reference() -> None:
    x = torch.randn(4, 32, generator=_gen(1))
    w = torch.randn(32, generator=_gen(2))
    with kernel_backend("auto"):
        assert torch.equal(rmsnorm.rms_norm(x, w, 1e-6), rmsnorm.rms_norm_ref(x, w, 1e-6))
    with pytest.raises(KernelBackendError, match="unknown kernel backend 'fast'"):
        set_kernel_backend("fast")
    wide = torch.randn(8, 6)  # d_conv 6: past what the conv kernels unroll
    with pytest.raises(KernelBackendError, match="mamba_d_conv 6"):
        conv.causal_conv1d_update(x[:3, :8], wide, None, torch.zeros(3, 8, 5), torch.tensor([0, 1, 2]))


_SIG = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int32: "i32", torch.int64: "i64",
        torch.int8: "i8", torch.bool: "i1"}  # fmt: skip


class _CompileOnly:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args)` compiles it for sm_90 with the
    argument types of the call (no GPU needed) instead of launching it."""

    def __init__(self, fn, log: list[str]) -> None:  # noqa: ANN001 - a triton JITFunction
        self.fn, self.log = fn, log

    def __getitem__(self, grid: tuple):  # noqa: ANN204
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        def launch(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            sig, consts = {}, {}
            for i, p in enumerate(self.fn.params):
                v = kwargs[p.name] if p.name in kwargs else args[i]
                if p.is_constexpr or v is None:
                    sig[p.name], consts[(i,)] = "constexpr", v
                elif isinstance(v, torch.Tensor):
                    sig[p.name] = "*" + _SIG[v.dtype]
                elif isinstance(v, bool):
                    sig[p.name] = "i1"
                elif isinstance(v, int):
                    sig[p.name] = "i32" if abs(v) < 2**31 else "i64"
                else:
                    sig[p.name] = "fp32"
            src = ASTSource(self.fn, signature=sig, constexprs=consts)
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            self.log.append(self.fn.__name__)

        return launch


@pytest.mark.skipif(INTERPRET, reason="the interpreter replaces compiled kernels")
def test_kernels_compile_for_hopper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bf16 kernel variant the wrappers launch compiles for sm_90 (catches Triton
    front-end errors on a machine without a GPU). CPU tensors only carry the argument types."""
    log: list[str] = []
    for module in (rmsnorm, conv, scan, attn):
        for name in dir(module):
            obj = getattr(module, name)
            if name.endswith("_kernel") and isinstance(obj, triton.runtime.jit.JITFunction):
                monkeypatch.setattr(module, name, _CompileOnly(obj, log))
    bf = torch.bfloat16
    x, w = torch.randn(4, 4096, dtype=bf), torch.randn(4096, dtype=bf)
    rmsnorm.fused_add_rms_norm(x, x, w, 1e-6)
    d, n, lens = 64, 16, torch.tensor([0, 3, 7])
    xt, cw, slots = torch.randn(7, d, dtype=bf), torch.randn(d, 4, dtype=bf), torch.tensor([0, 2])
    init = torch.tensor([True, False])
    conv.causal_conv1d_varlen(xt, cw, None, torch.zeros(3, d, 3, dtype=bf), lens, slots, None, 4)
    conv.causal_conv1d_varlen(xt, cw, xt[0], torch.zeros(3, d, 3, dtype=bf), lens, slots, init, 4)
    conv.causal_conv1d_update(xt[:2], cw, xt[0], torch.zeros(3, d, 3, dtype=bf), slots)
    a, bc = -torch.rand(d, n), torch.randn(7, n, dtype=bf)
    monkeypatch.setattr(scan, "SEQ_TILES", (4, 2, 1))  # segments of 2 tokens: both sequential passes
    for variant in ("chunked", "sequential"):
        monkeypatch.setattr(scan, "SCAN_VARIANT", variant)
        states = torch.zeros(3, d, n)
        scan.selective_scan_varlen(xt, xt, a, bc, bc, torch.ones(d), xt, xt[0], states, lens, slots, init)
    scan.selective_state_update(torch.zeros(3, d, n), xt[:2], xt[:2], a, bc[:2], bc[:2], torch.ones(d), xt[:2],
                                xt[0], slots)  # fmt: skip
    kc, tables = torch.randn(64, 8, 128, dtype=bf), torch.zeros(2, 4, dtype=torch.long)
    attn.paged_attention_prefill(
        torch.randn(7, 32, 128, dtype=bf), kc, kc, tables, lens, lens[:2], 16, 0.1, 4
    )
    attn.paged_attention_decode(torch.randn(2, 32, 128, dtype=bf), kc, kc, tables, lens[1:], 16, 0.1, 4000)
    expected = {"_rms_norm_kernel", "_conv_varlen_kernel", "_conv_state_kernel", "_conv_update_kernel",
                "_scan_kernel",
        "_seg_state_kernel", "_seg_combine_kernel", "_seg_scan_kernel", "_update_kernel", "_flash_kernel", "_decode_kernel", "_combine_kernel"}  # fmt: skip
    assert set(log) == expected
