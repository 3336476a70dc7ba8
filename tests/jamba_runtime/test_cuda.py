"""The reference runtime on a CUDA device with plain PyTorch ops (no custom kernels yet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, SamplingParams, load_model

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
