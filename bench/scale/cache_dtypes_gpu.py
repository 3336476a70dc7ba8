"""Cache dtypes on the GPU: float8 KV and bfloat16 Mamba state against the default cache, on the
Mini shape cut to 8 layers (bf16, random weights), one engine per setting over the same model.

    python -m bench.scale.cache_dtypes_gpu        # H100, about 2 minutes

Per setting: KV bytes per token and state slot bytes; quality against the default cache (step
logits relative error before the first differing greedy token, greedy agreement over
64 new tokens on 8 prompts of 512 tokens); decode ms/step at batch 1 after an 8K prompt and at batch
32 after 2K prompts (CUDA graphs on where the fast path runs); TTFT of a 32K prompt.
JSON to `$OUT/cache_dtypes_gpu.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

import torch

from bench.common.gpu_models import MINI_CONFIG, build_models, cut_config
from bench.common.gpu_timing import watch_runner
from bench.common.paths import RESULTS, out_dir
from jamba_runtime import EngineConfig, LLMEngine, SamplingParams, Tokenizer
from jamba_runtime.errors import RequestNotFoundError
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer

SETTINGS = {"default": {}, "fp8_kv": {"kv_cache_dtype": "fp8"}, "bf16_ssm": {"mamba_ssm_dtype": "bfloat16"}}


def record(engine: LLMEngine, prompts: list[list[int]], n: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    steps: list[torch.Tensor] = []
    undo = watch_runner(engine.runner, lambda logits: steps.append(logits.float().cpu()))
    try:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        ids = [engine.add_request(p, params).request_id for p in prompts]
        out: dict[str, list[int]] = {i: [] for i in ids}
        while engine.has_unfinished():
            for o in engine.step():
                out[o.request_id] += o.token_ids
    finally:
        undo()
    return [out[i] for i in ids], steps


def decode_ms(engine: LLMEngine, prompts: list[list[int]], steps: int = 24) -> float:
    # Enough tokens that no request ends while the step is timed (the first ones admitted start
    # decoding while later prompts are still being prefilled).
    params = SamplingParams(max_tokens=steps + 64, temperature=0, ignore_eos=True)
    ids = [engine.add_request(p, params).request_id for p in prompts]
    while any(s.num_computed_tokens < len(s.prompt_token_ids) for s in engine.requests.values()):
        engine.step()
    for _ in range(4):
        engine.step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    for i in ids:
        with contextlib.suppress(RequestNotFoundError):
            engine.abort(i)
    return 1e3 * dt


def ttft(engine: LLMEngine, prompt: list[int]) -> float:
    engine.add_request(prompt, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    torch.cuda.synchronize()
    t = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> int:
    # No options: --help prints the method.
    argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    device = torch.device("cuda")
    model, hf, _ = build_models(cut_config(MINI_CONFIG, 8), device, torch.bfloat16, seed=0)
    del hf
    tok_dir = RESULTS / "cache-dtypes-tok"
    write_tiny_tokenizer(tok_dir, vocab_size=model.config.vocab_size)
    tok = Tokenizer.from_dir(tok_dir)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(11)

    def rand(n: int) -> list[int]:
        return torch.randint(20, vocab, (n,), generator=gen).tolist()

    prompts = [rand(512) for _ in range(8)]
    long_prompt, decode1, decode32 = rand(32768), [rand(8192)], [rand(2048) for _ in range(32)]
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "rows": {}}
    ref: tuple[list[list[int]], list[torch.Tensor]] | None = None
    for name, kw in SETTINGS.items():
        cfg = EngineConfig(max_num_seqs=32, max_num_batched_tokens=8192, cache_memory_gb=8.0, **kw)
        engine = LLMEngine(model, tok, cfg)
        row: dict[str, Any] = {
            "kv_dtype": str(next(iter(engine.cache.keys.values())).dtype),
            "ssm_dtype": str(next(iter(engine.cache.ssm.values())).dtype),
            "fast_path": engine.runner.uses_fast_path(),
            "kv_blocks": engine.cache_manager.num_blocks,
        }
        ids, steps = record(engine, prompts, 64)
        if ref is None:
            ref = (ids, steps)
        else:
            errs = []
            for a, b in zip(steps, ref[1], strict=False):
                if a.shape != b.shape:
                    break
                errs.append(((a - b).norm() / b.norm()).item())
                if not torch.equal(a.argmax(-1), b.argmax(-1)):
                    break
            prefix = [
                next((k for k in range(len(b)) if a[k] != b[k]), len(b))
                for a, b in zip(ids, ref[0], strict=True)
            ]
            row.update(
                logits_rel_err_max=max(errs), steps_compared=len(errs), greedy_identical=sum(p == 64 for p in prefix),
                mean_agreeing_prefix=sum(prefix) / len(prefix), prompts=len(prompts), new_tokens=64,
            )  # fmt: skip
        row["decode_b1_ctx8k_ms"] = decode_ms(engine, decode1)
        row["decode_b32_ctx2k_ms"] = decode_ms(engine, decode32)
        ttft(engine, rand(1024))  # warm
        row["ttft_32k_s"] = ttft(engine, long_prompt)
        report["rows"][name] = row
        print(name, row, flush=True)
        del engine
        torch.cuda.empty_cache()
    (out_dir() / "cache_dtypes_gpu.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
