"""ExpertsInt8 at full size: the Jamba-1.5-Mini shape on one H100, and int8 quality on the 8-layer cut.

    python bench/scale_gpu.py                  # one H100 (nvidia-h100-x1), about 6 minutes
    python bench/scale_gpu.py --skip-quality   # only the full-shape rows

Quality (Mini cut to 8 layers, random weights, bf16): logits of one batch of prompts with the
experts in bf16 and then quantized in place to int8 (relative Frobenius error), and greedy
agreement over `--quality-tokens` new tokens on `--quality-prompts` prompts through the engine.

Full shape (all 32 layers; random weights made directly as int8 experts with per-channel scales,
the rest bf16, so no bf16 copy of the experts ever exists): weights GB, the engine's memory plan,
then through the engine (CUDA graphs on): batch-1 decode ms/token against the bandwidth floor
(bytes read per step / measured copy bandwidth), 64 concurrent x (2K + 128) total and decode
tokens/s, TTFT at 32K and 128K, and a 256K-token prompt (the longest the model takes). Peak GPU
memory per row. Table printed, JSON to `$OUT/scale_gpu.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu_models import (  # noqa: E402
    MINI_CONFIG,
    _init,
    _set_param,
    accounting,
    build_models,
    cut_config,
    decode_step_bytes,
    make_llm,
)
from bench.gpu_timing import Clock, free_memory, measure_hardware, timed_generate  # noqa: E402
from jamba_runtime.config import JambaConfig  # noqa: E402
from jamba_runtime.loader import empty_model  # noqa: E402
from jamba_runtime.model import JambaForCausalLM  # noqa: E402
from jamba_runtime.quantization import (  # noqa: E402
    parameter_bytes,
    prepare_experts_int8,
    quantize_experts_int8,
    stack_experts_int8,  # noqa: E402
)
from jamba_runtime.sampling_params import SamplingParams  # noqa: E402
from jamba_runtime.tiny_tokenizer import write_tiny_tokenizer  # noqa: E402

START = time.perf_counter()
GIB = 2**30


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def greedy(llm: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    return [list(o.token_ids) for o in llm.generate(prompts, params)]


def quality(args: argparse.Namespace, device: torch.device, tok: Path) -> dict[str, Any]:
    """bf16 experts vs the same experts quantized to int8, on the Mini shape cut to 8 layers."""
    model, hf, _ = build_models(cut_config(MINI_CONFIG, 8), device, torch.bfloat16, seed=0)
    del hf
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(20, vocab, (64,), generator=gen).tolist() for _ in range(args.quality_prompts)]
    ids = torch.tensor(prompts[:4], device=device)
    llm = make_llm(model, tok, len(prompts), 64 + args.quality_tokens + 16)
    ref_logits = model(ids).float()
    ref = greedy(llm, prompts, args.quality_tokens)
    del llm  # its captured graphs hold the bf16 experts' addresses: a new engine after quantizing
    free_memory()
    quantize_experts_int8(model)
    llm = make_llm(model, tok, len(prompts), 64 + args.quality_tokens + 16)
    logits = model(ids).float()
    got = greedy(llm, prompts, args.quality_tokens)
    prefix = []
    for a, b in zip(got, ref, strict=True):
        k = 0
        while k < len(a) and a[k] == b[k]:
            k += 1
        prefix.append(k)
    out = {
        "logits_rel_err": ((logits - ref_logits).norm() / ref_logits.norm()).item(),
        "top1_agreement_prefill": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        "greedy_identical": sum(a == b for a, b in zip(got, ref, strict=True)),
        "prompts": len(prompts),
        "new_tokens": args.quality_tokens,
        "mean_agreeing_prefix": sum(prefix) / len(prefix),
        "min_agreeing_prefix": min(prefix),
    }
    del llm, model
    free_memory()
    return out


def build_int8(raw: dict[str, Any], device: torch.device) -> JambaForCausalLM:
    """The full model with random weights, experts made directly as int8 (per-channel scales that
    give each weight row the std of the bf16 init), everything else bf16."""
    cfg = JambaConfig.from_dict(raw, source="bench config")
    model = empty_model(cfg)
    prepare_experts_int8(model)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, p in list(model.named_parameters()):
        if p.dtype == torch.int8:
            t = torch.randint(-127, 128, tuple(p.shape), generator=gen, device=device, dtype=torch.int8)
        elif name.endswith("weight_scale"):
            fan_in = model.get_submodule(name.rpartition(".")[0]).in_features
            # Uniform ints in [-127, 127] have std 127 / sqrt(3); scaled, the row's std is 1/sqrt(fan_in).
            t = torch.full(tuple(p.shape), math.sqrt(3) / (127 * math.sqrt(fan_in)), device=device)
        else:
            t = _init(name, tuple(p.shape), cfg, gen, device, torch.bfloat16)
        _set_param(model, name, t)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    stack_experts_int8(model)
    return model.eval()


def peak_gib(fn: Any) -> tuple[Any, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() / GIB


def full_rows(
    args: argparse.Namespace, device: torch.device, tok: Path, hw: dict[str, Any]
) -> dict[str, Any]:
    raw = cut_config(MINI_CONFIG, MINI_CONFIG["num_hidden_layers"])
    t = time.perf_counter()
    model = build_int8(raw, device)
    cfg = model.config
    res: dict[str, Any] = {
        "layers": cfg.num_hidden_layers,
        "build_s": time.perf_counter() - t,
        "weights_gib": parameter_bytes(model) / GIB,
        "expert_weights_gib": parameter_bytes(model, expert_only=True) / GIB,
        "resident_after_build_gib": torch.cuda.memory_allocated() / GIB,
    }
    log(f"full Mini int8 built: {res}")
    acct = accounting(model, cfg)
    # accounting() assumes float experts: int8 bytes and float32 scales per expert instead.
    h, i = cfg.hidden_size, cfg.intermediate_size
    acct["per_expert_bytes"] = 3 * h * i + (2 * i + h) * 4
    longest = args.longest
    llm = make_llm(model, tok, args.concurrent, args.prompt_len + args.new_tokens + 16, args.chunk,
                   capacity_tokens=longest + 64)  # fmt: skip
    res["max_model_len"] = llm.engine.max_model_len
    res["cache_gib"] = llm.engine.cache.nbytes() / GIB
    clock = Clock(device)
    runner = llm.engine.runner
    vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(5)

    def ids(b: int, p: int) -> torch.Tensor:
        return torch.randint(20, vocab, (b, p), generator=gen)

    def run(b: int, p: int, n: int) -> dict[str, Any]:
        x = ids(b, p)
        greedy(llm, x.tolist(), min(n, 8))  # warm: compiles, graph captures at these sizes
        r, pk = peak_gib(lambda: timed_generate(clock, runner, lambda y, k: greedy(llm, y.tolist(), k), x, n))
        floor = decode_step_bytes(cfg, acct, b, p + n / 2) / hw["copy_bandwidth_bytes_s"]
        return {
            "batch": b, "prompt_len": p, "new_tokens": n, "ms_per_token": 1e3 * r["decode_s"] / max(n - 1, 1),
            "decode_tokens_per_s": r["window_tokens"] / r["decode_s"] if r["decode_s"] > 0 else None,
            "total_tokens_per_s": b * n / r["total_s"], "total_s": r["total_s"], "first_token_s": r["first_token_s"],
            "floor_ms_per_step": 1e3 * floor, "peak_gib": pk,
        }  # fmt: skip

    rows: dict[str, Any] = {}
    for key, (b, p, n) in {
        "decode_b1": (1, 1024, 128),
        "concurrent": (args.concurrent, args.prompt_len, args.new_tokens),
    }.items():
        try:
            rows[key] = run(b, p, n)
            log(f"{key}: {rows[key]}")
        except Exception as e:  # noqa: BLE001 - a failing row is recorded, the others still run
            traceback.print_exc()
            rows[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
        free_memory()
    for p in [*args.ttft, longest]:
        key = f"ttft_{p}"
        try:
            x = ids(1, p)
            r, pk = peak_gib(
                lambda x=x: timed_generate(clock, runner, lambda y, k: greedy(llm, y.tolist(), k), x, 1)
            )
            rows[key] = {"prompt_len": p, "ttft_s": r["total_s"], "peak_gib": pk}
            log(f"{key}: {rows[key]}")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
        free_memory()
    res["rows"] = rows
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--quality-prompts", type=int, default=16)
    ap.add_argument("--quality-tokens", type=int, default=256)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--ttft", default="32768,131072")
    ap.add_argument(
        "--longest", type=int, default=262_000, help="the longest prompt tried (the model takes 262,144)"
    )
    args = ap.parse_args()
    args.ttft = [int(x) for x in args.ttft.split(",") if x]
    device = torch.device("cuda")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                              "args": vars(args), "method": __doc__}  # fmt: skip
    report["hardware"] = hw = measure_hardware(device, torch.bfloat16, quick=True)
    tok = REPO / "bench" / "results" / "scale-tok"
    write_tiny_tokenizer(tok, vocab_size=MINI_CONFIG["vocab_size"])
    out_dir = Path(os.environ.get("OUT") or REPO / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "scale_gpu.json"
    if not args.skip_quality:
        try:
            report["quality_mini8"] = quality(args, device, tok)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            report["quality_mini8"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        log(f"quality: {report['quality_mini8']}")
        out.write_text(json.dumps(report, indent=1, default=str))
    try:
        report["full_mini_int8"] = full_rows(args, device, tok, hw)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        report["full_mini_int8"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "method"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
