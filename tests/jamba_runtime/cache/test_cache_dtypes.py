"""Cache dtypes: float8 KV (`kv_cache_dtype="fp8"`) and bfloat16 Mamba SSM state
(`mamba_ssm_dtype="bfloat16"`) against the default cache, on the tiny model (CPU, reference path).

The quality numbers these tests bound are printed in docs/scaling.md: the logits relative error
of every step before the first differing greedy token, against the same engine with the default
cache dtypes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, EngineConfig, LLMEngine, SamplingParams
from jamba_runtime.engine.memory_plan import plan_memory
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.errors import InvalidRequestError

PROMPTS = [[1, *range(30, 70)], [1, 5, 9, 200, 301], [1, *range(400, 433)]]


def _step_logits(
    engine: LLMEngine, prompts: list[list[int]], n: int
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy outputs and every step's logits (float32, host)."""
    runner = engine.runner
    execute = runner.execute
    steps: list[torch.Tensor] = []

    def recording(step: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        seqs, logits = execute(step)
        steps.append(logits.detach().float().cpu())
        return seqs, logits

    runner.execute = recording  # type: ignore[method-assign]
    try:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        ids = [engine.add_request(p, params).request_id for p in prompts]
        out: dict[str, list[int]] = {i: [] for i in ids}
        while engine.has_unfinished():
            for o in engine.step():
                out[o.request_id] += o.token_ids
    finally:
        del runner.execute
    return [out[i] for i in ids], steps


def _max_rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    errs = []
    for x, y in zip(a, b, strict=False):
        if x.shape != y.shape:
            break
        errs.append(((x - y).norm() / y.norm()).item())
        if not torch.equal(x.argmax(-1), y.argmax(-1)):
            break
    return max(errs)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=4, cache_memory_gb=0.02))


def _engine(llm: LLM, **kw: str) -> LLMEngine:
    return LLMEngine(llm.model, llm.tokenizer, EngineConfig(max_num_seqs=4, cache_memory_gb=0.02, **kw))


def test_fp8_kv_cache_stores_float8_and_stays_close(llm: LLM) -> None:
    base = _engine(llm)
    fp8 = _engine(llm, kv_cache_dtype="fp8")
    assert all(t.dtype == torch.float8_e4m3fn for t in fp8.cache.keys.values())
    assert all(t.dtype == llm.model.dtype for t in base.cache.keys.values())
    # The same memory holds 4x the KV positions of a float32 model (1 byte a value against 4).
    assert fp8.cache_manager.num_blocks > 3 * base.cache_manager.num_blocks
    ref_ids, ref = _step_logits(base, PROMPTS, 8)
    ids, got = _step_logits(fp8, PROMPTS, 8)
    err = _max_rel_err(got, ref)
    assert 0 < err < 0.1, f"fp8 KV logits rel err {err:.3g}"
    assert all(torch.isfinite(t).all() for t in got)
    assert sum(a[:3] == b[:3] for a, b in zip(ids, ref_ids, strict=True)) >= 2


def test_bfloat16_ssm_state_is_half_the_slot_and_stays_close(llm: LLM) -> None:
    base = _engine(llm)
    bf16 = _engine(llm, mamba_ssm_dtype="bfloat16")
    assert all(t.dtype == torch.bfloat16 for t in bf16.cache.ssm.values())
    assert not bf16.cache.paged_kernels_available(), "the scan kernels keep float32 state"
    _, ref = _step_logits(base, PROMPTS, 8)
    _, got = _step_logits(bf16, PROMPTS, 8)
    err = _max_rel_err(got, ref)
    assert 0 < err < 0.1, f"bf16 SSM state logits rel err {err:.3g}"


def test_memory_plan_counts_the_cache_dtypes(llm: LLM) -> None:
    cfg = llm.model.config
    bf16 = plan_memory(cfg, "bfloat16")
    fp8 = plan_memory(cfg, "bfloat16", kv_cache_dtype=torch.float8_e4m3fn)
    half_state = plan_memory(cfg, "bfloat16", ssm_dtype=torch.bfloat16)
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert half_state.mamba_slot_bytes < bf16.mamba_slot_bytes


@pytest.mark.parametrize("kw", [{"kv_cache_dtype": "int4"}, {"mamba_ssm_dtype": "float16"}])
def test_unknown_cache_dtypes_are_refused_by_name(llm: LLM, kw: dict[str, str]) -> None:
    (value,) = kw.values()
    with pytest.raises(InvalidRequestError, match=value):
        _engine(llm, **kw)
