"""The runtime on a CUDA device: logits and generation against the CPU, and decode steps launched
ahead of reading the last step's tokens against reading every step."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, EngineConfig, SamplingParams, load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_logits_match_cpu(tiny_model_dir: Path) -> None:
    ids = torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(0))
    cpu = load_model(tiny_model_dir)(ids)
    gpu = load_model(tiny_model_dir, device="cuda")(ids.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4 * cpu.abs().max().item())
    bf16 = load_model(tiny_model_dir, device="cuda", dtype="bfloat16")(ids.cuda()).float().cpu()
    assert ((bf16 - cpu).norm() / cpu.norm()).item() < 0.05


def test_cuda_generation_matches_cpu(tiny_model_dir: Path) -> None:
    prompts = ["The cache", "Mamba layers keep a constant-size state"]
    greedy = SamplingParams(max_tokens=32, temperature=0)
    cpu = LLM(model=tiny_model_dir).generate(prompts, greedy)
    gpu_llm = LLM(model=tiny_model_dir, device="cuda")
    gpu = gpu_llm.generate(prompts, greedy)
    assert [o.token_ids for o in gpu] == [o.token_ids for o in cpu]
    seeded = SamplingParams(max_tokens=32, temperature=1.0, top_p=0.9, seed=3)
    assert gpu_llm.generate(prompts, seeded)[1].token_ids == gpu_llm.generate(prompts[1], seeded)[0].token_ids
    bf16 = LLM(model=tiny_model_dir, device="cuda", dtype="bfloat16").generate(prompts, greedy)
    assert all(len(o.token_ids) > 0 for o in bf16)


def test_decode_graphs_launched_ahead_give_the_tokens_of_reading_every_step(tiny_model_dir: Path) -> None:
    """bf16 on CUDA, where decode steps replay graphs: with the next step launched before the
    last one's tokens are read (fed to the graph on the device), greedy and seeded outputs are
    those of reading every step (no stops: the batches are then the same step by step)."""
    prompts = ["The cache", "Mamba layers keep a constant-size state", "A", "hybrid models " * 9]
    params = [
        SamplingParams(max_tokens=n, temperature=t, seed=7 + n, ignore_eos=True)
        for n, t in ((40, 0.0), (33, 1.0), (5, 0.0), (21, 0.8))
    ]
    gc.collect()  # the engines of the tests above (each took most of the free memory for its cache)
    torch.cuda.empty_cache()
    outs, ahead = [], []
    for on in (True, False):
        llm = LLM(
            model=tiny_model_dir,
            device="cuda",
            dtype="bfloat16",
            engine=EngineConfig(max_num_seqs=8, cache_memory_gb=0.5, async_scheduling=on),
        )
        assert llm.engine.runner.graphs is not None
        outs.append([o.token_ids for o in llm.generate(prompts, params)])
        ahead.append(llm.engine.metrics().steps_ahead_total)
        assert llm.engine.runner.graphs.captured  # the decode steps replayed graphs
    assert outs[0] == outs[1]
    assert [len(t) for t in outs[0]] == [40, 33, 5, 21]
    assert ahead[0] >= 30 and ahead[1] == 0
