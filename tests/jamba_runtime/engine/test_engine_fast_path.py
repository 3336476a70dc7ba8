"""The engine's GPU fast path (packed/paged kernels on the paged cache) against its reference path.

The fast path runs where the Triton kernels run: on CUDA, or on CPU under Triton's interpreter
(`TRITON_INTERPRET=1` set before Python starts, then `kernel_backend("triton")`):

    TRITON_INTERPRET=1 python -m pytest -q tests/jamba_runtime/engine/test_engine_fast_path.py   # CPU
    python -m pytest -q tests/jamba_runtime/engine/test_engine_fast_path.py                      # CUDA

Without either, only the tests that need no kernel run; without `triton`, the file is skipped.
Both paths run the same engine on the same tiny model (float32), one after the other, with NaN
put in every free state slot first: a new sequence must start from zeros, never read its slot.
The interpreter runs every kernel program in Python, so prompts are short and the scan uses its
`sequential` kernel (the `chunked` one is checked against its reference in test_kernels_triton.py).
"""

# ruff: noqa: E402 - the kernel modules are imported only once triton is known to import
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from jamba_runtime import EngineConfig, SamplingParams
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.kernels import selective_scan as scan
from jamba_runtime.kernels.backend import kernel_backend, patch_triton_interpreter
from jamba_runtime.llm import LLM
from jamba_runtime.model.expert_layout import quantize_experts_int8
from jamba_runtime.model.modeling import JambaSparseMoeBlock

INTERPRET = bool(getattr(getattr(triton, "knobs", None), "runtime", None) and triton.knobs.runtime.interpret)
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
runs_kernels = pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="needs a CUDA device or TRITON_INTERPRET=1 (set before Python starts)"
)
FAST = "triton" if INTERPRET else "auto"  # the backend under which the runner takes the fast path
TOL = 1e-4  # relative error of float32 logits (the kernels use exact float32 dots for float32)

if INTERPRET:
    patch_triton_interpreter()


@pytest.fixture(autouse=True)
def _sequential_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    if INTERPRET:
        monkeypatch.setattr(scan, "SCAN_VARIANT", "sequential")


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[LLM]:
    # Blocks of 4 tokens: prompts span several blocks and end inside one. Budget 8: a 12-token
    # prompt is prefilled in two chunks while a shorter one already decodes beside it.
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=8, block_size=4, cache_memory_gb=0.01)
    yield LLM(model=tiny_model_dir, device=DEVICE, engine=engine)


def _run(llm: LLM, backend: str, prompts: list[list[int]], max_tokens: int, **kw: object):  # noqa: ANN202
    """Greedy outputs, every step's logits, whether each step took the fast path, tokens per step."""
    runner = llm.engine.runner
    execute, execute_fed = runner.execute, runner.execute_fed
    logits: list[torch.Tensor] = []
    fast: list[bool] = []
    tokens: list[int] = []

    def record(step: SchedulerOutput, out: torch.Tensor) -> None:
        fast.append(runner.uses_fast_path())
        tokens.append(sum(item.num_tokens for item in step.scheduled))
        logits.append(out.detach().float().cpu())

    def recording(step: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        seqs, out = execute(step)
        record(step, out)
        return seqs, out

    def recording_fed(step: SchedulerOutput, fed: torch.Tensor) -> torch.Tensor:
        out = execute_fed(step, fed)  # a decode step launched ahead (engine/ahead.py)
        record(step, out)
        return out

    runner.execute, runner.execute_fed = recording, recording_fed  # type: ignore[method-assign]
    try:
        with kernel_backend(backend):
            outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0), **kw)
    finally:
        del runner.execute, runner.execute_fed
    return [o.token_ids for o in outs], logits, fast, tokens


def _poison_state_slots(llm: LLM) -> None:
    """NaN in every Mamba state slot: a new sequence that read its slot instead of zeros would
    turn its logits to NaN. Only while no snapshot holds a slot."""
    cache = llm.engine.cache
    for t in [*cache.conv.values(), *cache.ssm.values()]:
        t.fill_(float("nan"))


def _assert_close(fast: list[torch.Tensor], ref: list[torch.Tensor], tol: float = TOL) -> None:
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
        assert a.shape == b.shape, f"step {i}: {tuple(a.shape)} vs {tuple(b.shape)}"
        assert torch.isfinite(a).all(), f"step {i}: non-finite logits"
        err = ((a - b).norm() / b.norm()).item()
        assert err < tol, f"step {i}: relative error {err:.2e}"


def test_reference_path_stays_off_the_kernels_on_cpu(llm: LLM) -> None:
    """Under the default backend a CPU engine keeps the reference path (what the CPU tests pin)."""
    if DEVICE == "cpu":
        assert not llm.engine.runner.uses_fast_path()
    with kernel_backend("reference"):
        assert not llm.engine.runner.uses_fast_path()
    llm.engine.runner.fast_path = False
    try:
        with kernel_backend(FAST):
            assert not llm.engine.runner.uses_fast_path()
    finally:
        llm.engine.runner.fast_path = True


@runs_kernels
def test_mixed_and_chunked_steps_match_the_reference(llm: LLM) -> None:
    # Step 1: the short prompt whole + the long one's first 4 tokens; step 2: a decode beside the
    # long prompt's next 7 (after its cached 4); then one-token steps (the decode kernels).
    prompts = [[1, 17, 230, 5], [1, *range(40, 51)]]
    _poison_state_slots(llm)
    ref_ids, ref_logits, ref_fast, _ = _run(llm, "reference", prompts, max_tokens=3)
    _poison_state_slots(llm)
    ids, logits, fast, tokens = _run(llm, FAST, prompts, max_tokens=3)
    assert not any(ref_fast) and all(fast)
    assert tokens == [8, 8, 2, 1, 1], "a mixed step (decode + chunk), then one-token steps"
    _assert_close(logits, ref_logits)
    assert ids == ref_ids


@runs_kernels
def test_restored_prefix_matches_the_reference(llm: LLM) -> None:
    prefix = [1, 9, 88, 301, 14, 15, 16]  # ends inside a block: the restore copies it on write
    _poison_state_slots(llm)
    llm.save_prefix(prefix, key="fast-path")
    prompts = [[*prefix, 500, 501]]
    ref_ids, ref_logits, _, _ = _run(llm, "reference", prompts, max_tokens=2, prefix_snapshot="fast-path")
    ids, logits, fast, tokens = _run(llm, FAST, prompts, max_tokens=2, prefix_snapshot="fast-path")
    assert all(fast)
    assert tokens == [2, 1], "started from the snapshot: only the two new tokens, then a decode"
    _assert_close(logits, ref_logits)
    assert ids == ref_ids


def _moe_blocks(llm: LLM) -> list[JambaSparseMoeBlock]:
    return [m for m in llm.model.modules() if isinstance(m, JambaSparseMoeBlock)]


def test_stacked_experts_are_copies_or_views_and_follow_the_weights(tiny_model_dir: Path) -> None:
    llm = LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=1, cache_memory_gb=0.01))
    block = _moe_blocks(llm)[0]
    inter = block.experts[0].gate_proj.weight.shape[0]
    w13, w2 = block.stacked_experts()
    for e, expert in enumerate(block.experts):
        assert torch.equal(w13[e, :inter], expert.gate_proj.weight)
        assert torch.equal(w13[e, inter:], expert.up_proj.weight)
        assert torch.equal(w2[e], expert.down_proj.weight)
    assert block.stacked_experts()[0] is w13, "made once, then kept"
    # Checkpoint tensors are separate: a copy. Re-point the experts into it (as a fused checkpoint
    # layout would be) and the next call returns views of that buffer instead of copying again.
    fused13, fused2 = w13.clone(), w2.clone()
    for e, expert in enumerate(block.experts):
        expert.gate_proj.weight = torch.nn.Parameter(fused13[e, :inter], requires_grad=False)
        expert.up_proj.weight = torch.nn.Parameter(fused13[e, inter:], requires_grad=False)
        expert.down_proj.weight = torch.nn.Parameter(fused2[e], requires_grad=False)
    v13, v2 = block.stacked_experts()
    assert v13.data_ptr() == fused13.data_ptr() and v2.data_ptr() == fused2.data_ptr()
    # An in-place write is seen (views share it; a copy would be remade).
    with torch.no_grad():
        block.experts[1].down_proj.weight.mul_(2)
    assert torch.equal(block.stacked_experts()[1][1], block.experts[1].down_proj.weight)
    quantize_experts_int8(llm.model)
    assert block.stacked_experts() is None, "int8 experts have no float stacks"
    w13, s13, w2, s2 = block.stacked_int8()
    for e, expert in enumerate(block.experts):  # views of the layer-wide int8 buffers
        assert torch.equal(w13[e, :inter], expert.gate_proj.weight)
        assert torch.equal(s13[e, inter:], expert.up_proj.weight_scale)
        assert torch.equal(w2[e], expert.down_proj.weight)
        assert expert.down_proj.weight.data_ptr() == w2[e].data_ptr()


def test_capture_sizes_cover_every_batch_up_to_the_maximum() -> None:
    from jamba_runtime.engine.graphs import capture_sizes

    for top in (1, 3, 8, 20, 64):
        sizes = capture_sizes(top)
        assert sizes[-1] == top and sizes == sorted(set(sizes))
        for n in range(1, top + 1):
            padded = next(s for s in sizes if s >= n)
            assert padded - n <= max(7, n), f"{n} pads to {padded}"


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
def test_decode_graphs_replay_what_eager_steps_compute(tiny_model_dir: Path) -> None:
    """Batches of 1, 3 and 5 sequences (3 and 5 replay graphs of 4 and 8 with padding rows), and
    sequences that finish at different steps: every step's logits and every token as eager."""
    engine = EngineConfig(max_num_seqs=8, block_size=4, cache_memory_gb=0.05)
    # bfloat16: the grouped MoE matmul (what capture needs) takes bfloat16 only on CUDA.
    llm = LLM(model=tiny_model_dir, device=DEVICE, dtype="bfloat16", engine=engine)
    graphs = llm.engine.runner.graphs
    assert graphs is not None and graphs.sizes == [1, 2, 4, 8]
    prompts = [[1, *range(10 + i, 14 + 3 * i)] for i in range(5)]
    for batch in ([prompts[0]], prompts[:3], prompts):
        llm.engine.runner.graphs = None
        _poison_state_slots(llm)
        ref_ids, ref_logits, _, _ = _run(llm, FAST, batch, max_tokens=6)
        llm.engine.runner.graphs = graphs
        _poison_state_slots(llm)
        ids, logits, fast, _ = _run(llm, FAST, batch, max_tokens=6)
        assert all(fast)
        # The same kernels; a padded batch may only change a matmul's algorithm (bf16 rounding).
        _assert_close(logits, ref_logits, tol=1e-2)
        assert ids == ref_ids
    assert graphs.captured == [1, 4, 8]
    float32 = LLM(model=tiny_model_dir, device=DEVICE, engine=engine)
    assert float32.engine.runner.graphs is None, "float32 MoE cannot be captured: eager steps"
    # Sequences leave the batch one by one (batch 5 -> 4 -> ... -> 1 across the graphs).
    params = [SamplingParams(max_tokens=2 + i, temperature=0) for i in range(5)]
    with_graphs = [o.token_ids for o in llm.generate(prompts, params)]
    llm.engine.runner.graphs = None
    assert [o.token_ids for o in llm.generate(prompts, params)] == with_graphs
    # What `serve` runs before listening, on a fresh engine: its request's decode step captures
    # size 1, then the other sizes; the engine is left idle and clean, and the tokens unchanged.
    fresh = LLM(model=tiny_model_dir, device=DEVICE, dtype="bfloat16", engine=engine)
    fresh_graphs = fresh.engine.runner.graphs
    assert fresh_graphs is not None and fresh_graphs.captured == []
    assert fresh.engine.warm_up() == 3 and fresh_graphs.captured == [1, 2, 4, 8]
    fresh.engine.check_cache()
    assert fresh.engine.metrics().generation_tokens_total == 0
    assert [o.token_ids for o in fresh.generate(prompts, params)] == with_graphs


@runs_kernels
def test_int8_experts_on_the_fast_path_match_the_reference(tiny_model_dir: Path) -> None:
    """ExpertsInt8: the fast path's int8 MoE kernel (weights dequantized inside the GEMM) gives
    the logits of the reference expert loop over the same int8 weights."""
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=8, block_size=4, cache_memory_gb=0.01)
    llm = LLM(model=tiny_model_dir, device=DEVICE, engine=engine, quantization="experts_int8")
    assert all(b.stacked_int8() is not None for b in _moe_blocks(llm)), "the loader stacks int8 experts"
    prompts = [[1, 17, 230, 5], [1, *range(40, 51)]]
    _poison_state_slots(llm)
    ref_ids, ref_logits, _, _ = _run(llm, "reference", prompts, max_tokens=3)
    _poison_state_slots(llm)
    ids, logits, fast, _ = _run(llm, FAST, prompts, max_tokens=3)
    assert all(fast)
    _assert_close(logits, ref_logits)
    assert ids == ref_ids
