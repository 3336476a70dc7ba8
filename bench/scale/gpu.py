"""A full Jamba shape (Mini by default; Large, or any config in shared/models) on one GPU
(ExpertsInt8) and over several (tensor + expert parallel, bf16 or int8 experts), and int8 quality
on the Mini shape cut to 8 layers.

    python -m bench.scale.gpu                                  # one H100, int8, with quality, ~6 min
    python -m bench.scale.gpu --skip-quality --tp 2 --weights bf16   # nvidia-h100-x2
    python -m bench.scale.gpu --skip-quality --tp 4 --weights int8   # nvidia-h100-x4
    python -m bench.scale.gpu --shape large --tp 8 --plan-only       # Large's plan on 8 x 80 GiB, CPU
    python -m bench.scale.gpu --shape large --tp 8 --skip-quality    # nvidia-h100-x8

`--shape` takes a built-in name (mini, large, tiny, tiny-large: `bench/scale/shapes.py`) or a
folder of shared/models (`jamba-1.5-large`, `jamba-tiny-dev`, ...); `--config PATH` any config.json.
Before loading, the memory plan of the shape over `--tp` GPUs is printed (`bench/scale/plan.py`:
weights per GPU, KV per token and Mamba state per sequence, the KV tokens the GPUs hold at
`--gpu-memory-utilization`, the headroom with one `--context`-token sequence resident);
`--plan-only` prints it and exits without allocating (any machine).

Quality (Mini cut to 8 layers, random weights, bf16): logits of one batch of prompts with the
experts in bf16 and then quantized in place to int8 (relative Frobenius error), and greedy
agreement over `--quality-tokens` new tokens on `--quality-prompts` prompts through the engine.

Full shape (all its layers) through `LLM(..., load_format="dummy", tensor_parallel_size=N)`: random
weights made on each GPU from config.json (int8 experts made directly as int8, so no bf16 copy of
them ever exists): weights GB per GPU, the engine's memory plan, then (CUDA graphs on) batch-1
decode ms/token against the bandwidth floor (bytes one rank reads per step / measured copy
bandwidth; all-reduce time not counted), 64 concurrent x (2K + 128) total and decode tokens/s,
TTFT at 32K and 128K, and a 256K-token prompt (the longest the model takes). Rank 0's peak GPU
memory per row. JSON to `$OUT/scale_gpu<tag>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common.gpu_models import (
    MINI_CONFIG,
    accounting,
    bench_async_scheduling,
    build_models,
    cut_config,
    make_llm,
)
from bench.common.gpu_timing import Clock, free_memory, log, measure_hardware, timed_generate
from bench.common.paths import RESULTS, out_dir
from bench.scale.plan import ScalePlan, scale_plan
from bench.scale.shapes import read_config, resolve_shape
from jamba_runtime import EngineConfig, SamplingParams
from jamba_runtime.cache.paged import block_bytes, slot_bytes
from jamba_runtime.config import JambaConfig
from jamba_runtime.engine.memory_plan import engine_memory_plan
from jamba_runtime.errors import JambaStackError
from jamba_runtime.llm import LLM
from jamba_runtime.model.expert_layout import quantize_experts_int8
from jamba_runtime.model.quantization import parameter_bytes
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer

GIB = 2**30


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


def step_bytes(cfg: JambaConfig, acct: dict[str, Any], b: int, context: float, tp: int) -> float:
    """Bytes one rank reads in a decode step of `b` sequences at `context` tokens: its shard's
    weights less the experts no token hit, its KV heads, its Mamba channels (`decode_step_bytes`
    of `bench.common.gpu_models` when `tp` is 1)."""
    e, k = cfg.num_experts, cfg.num_experts_per_tok
    held = e / tp
    distinct = held * (1 - (1 - k / e) ** b)  # expected held experts hit by b uniformly routed tokens
    weights = acct["total_bytes"] - acct["moe_layers"] * (held - distinct) * acct["per_expert_bytes"]
    if not cfg.tie_word_embeddings:
        weights -= acct["embedding_bytes"]  # a gather, not a read of the table
    kv = len(cfg.attention_layers) * 2 * cfg.num_key_value_heads / tp * cfg.head_dim * context * b * 2
    per_layer = cfg.mamba_d_inner / tp * (cfg.mamba_d_state * 4 + (cfg.mamba_d_conv - 1) * 2)
    return weights + kv + 2 * len(cfg.mamba_layers) * per_layer * b


def config_name(config: str | Path) -> str:
    """The folder name of a `--config` path (given as the folder or its config.json)."""
    p = Path(config).resolve()
    return (p if p.is_dir() else p.parent).name


def model_dir(shape: str, layers: int | None, config: str | Path | None = None) -> Path:
    """config.json of the shape (a name of `bench/scale/shapes.py`, or the config.json at `config`;
    cut to `layers`) and a tokenizer: what `load_format="dummy"` reads."""
    base = read_config(config) if config else resolve_shape(shape)
    raw = cut_config(base, layers) if layers else base
    name = config_name(config) if config else shape
    d = RESULTS / f"scale-{name}-{raw['num_hidden_layers']}"
    d.mkdir(parents=True, exist_ok=True)
    JambaConfig.from_dict(raw, source="bench config").save(d)
    write_tiny_tokenizer(d, vocab_size=raw["vocab_size"])
    return d


def engine_config(
    cfg: JambaConfig, tp: int, max_batch: int, tokens: int, chunk: int, capacity: int
) -> EngineConfig:
    """A cache sized to the rows (plus 25%), not to the free memory: peak memory then shows what
    the rows need. `JAMBA_BENCH_ASYNC_SCHEDULING=off` turns the steps launched ahead off (an A/B)."""
    block = 16
    blocks = max(capacity, max_batch * tokens) // block + 2 * max_batch + 64
    slots = max_batch + 4
    need = blocks * block_bytes(cfg, block, torch.bfloat16, tp) + slots * slot_bytes(
        cfg, torch.bfloat16, torch.float32, tp
    )
    return EngineConfig(
        max_num_seqs=max_batch, max_num_batched_tokens=chunk, block_size=block,
        cache_memory_gb=need * 1.25 / GIB + 0.01, num_snapshot_slots=4,
        async_scheduling=bench_async_scheduling(),
    )  # fmt: skip


def peak_gib(fn: Any) -> tuple[Any, float | None]:
    if not torch.cuda.is_available():
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() / GIB


def full_rows(
    args: argparse.Namespace, hw: dict[str, Any], save: Callable[[dict[str, Any]], None] = lambda _: None
) -> dict[str, Any]:
    """The shape through `LLM(load_format="dummy")` on `args.tp` GPUs with `args.weights` experts;
    rank 0's numbers (every rank holds an equal shard and runs every step). `save` gets the results
    so far after start-up and after each row (a run cut by its time limit keeps its rows)."""
    tp, quant = args.tp, quantization(args)
    directory = model_dir(args.shape, args.layers, args.config)
    cfg = JambaConfig.from_file(directory)
    longest = args.longest
    b1 = args.decode_prompt_len + args.decode_tokens + 16
    max_len = max(args.prompt_len + args.new_tokens + 16, b1, *args.ttft, longest) + 64
    eng = engine_config(cfg, tp, args.concurrent, args.prompt_len + args.new_tokens + 16, args.chunk, max_len)
    cuda = args.device == "cuda"
    t = time.perf_counter()
    llm = LLM(directory, device=args.device, dtype="bfloat16" if cuda else "float32", quantization=quant,
              tensor_parallel_size=tp, load_format="dummy", engine=eng, max_model_len=max_len)  # fmt: skip
    model = llm.model
    res: dict[str, Any] = {
        "layers": cfg.num_hidden_layers, "tp": tp, "weights": args.weights,
        "start_s": time.perf_counter() - t,
        "weights_gib_per_gpu": parameter_bytes(model) / GIB,
        "expert_weights_gib_per_gpu": parameter_bytes(model, expert_only=True) / GIB,
        "resident_after_start_gib": torch.cuda.memory_allocated() / GIB if cuda else None,
        "memory_plan": engine_memory_plan(model, eng, llm.max_model_len, tp).summary(),
        "cuda_graphs": llm.engine.runner.graphs is not None,
        "max_model_len": llm.max_model_len, "cache_gib": llm.engine.cache.nbytes() / GIB,
    }  # fmt: skip
    log(f"started: {res}")
    rows: dict[str, Any] = {}
    res["rows"] = rows
    save(res)
    acct = accounting(model, cfg)
    if quant is not None:  # accounting() assumes float experts: int8 bytes and float32 scales instead
        h, i = cfg.hidden_size, cfg.intermediate_size
        acct["per_expert_bytes"] = 3 * h * i + (2 * i + h) * 4
    clock = Clock(torch.device(args.device))
    runner = llm.engine.runner
    gen = torch.Generator().manual_seed(5)

    def ids(b: int, p: int) -> torch.Tensor:
        return torch.randint(20, cfg.vocab_size, (b, p), generator=gen)

    def run(b: int, p: int, n: int) -> dict[str, Any]:
        x = ids(b, p)
        greedy(llm, x.tolist(), min(n, 8))  # warm: compiles, graph captures at these sizes
        r, pk = peak_gib(lambda: timed_generate(clock, runner, lambda y, k: greedy(llm, y.tolist(), k), x, n))
        floor = step_bytes(cfg, acct, b, p + n / 2, tp) / hw["copy_bandwidth_bytes_s"]
        return {
            "batch": b, "prompt_len": p, "new_tokens": n, "ms_per_token": 1e3 * r["decode_s"] / max(n - 1, 1),
            "decode_tokens_per_s": r["window_tokens"] / r["decode_s"] if r["decode_s"] > 0 else None,
            "total_tokens_per_s": b * n / r["total_s"], "total_s": r["total_s"], "first_token_s": r["first_token_s"],
            "floor_ms_per_step": 1e3 * floor, "peak_gib": pk,
        }  # fmt: skip

    plan = {
        "decode_b1": (1, args.decode_prompt_len, args.decode_tokens),
        "concurrent": (args.concurrent, args.prompt_len, args.new_tokens),
    }
    for key, (b, p, n) in plan.items():
        try:
            rows[key] = run(b, p, n)
            log(f"{key}: {rows[key]}")
        except Exception as e:  # noqa: BLE001 - a failing row is recorded, the others still run
            traceback.print_exc()
            rows[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
        save(res)
        free_memory()
    for p in [*args.ttft, *([longest] if longest else [])]:
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
        save(res)
        free_memory()
    res["llm"] = llm  # closed by main after the JSON is written (a stuck teardown loses no numbers)
    return res


def quantization(args: argparse.Namespace) -> str | None:
    return "experts_int8" if args.weights == "int8" else None


def target_plan(args: argparse.Namespace, cfg: JambaConfig, device: torch.device) -> ScalePlan:
    """The plan of the run about to start (or of `--plan-only`): the shape over `args.tp` GPUs of
    this machine's GPU memory on CUDA (`--gpu-memory-gib` when given or off CUDA), the engine
    settings of the rows (`--concurrent` sequences, `--chunk` tokens a step)."""
    if args.gpu_memory_gib is not None:
        memory = int(args.gpu_memory_gib * GIB)
    elif device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        memory = 80 * GIB
    return scale_plan(
        cfg,
        args.tp,
        quantization=quantization(args),
        dtype="bfloat16" if device.type == "cuda" or args.plan_only else "float32",
        device_memory_bytes=memory,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.concurrent,
        max_num_batched_tokens=args.chunk,
        target_context=args.context,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=1, help="GPUs (tensor + expert parallel)")
    ap.add_argument("--weights", choices=["int8", "bf16"], default="int8", help="expert weights")
    ap.add_argument("--layers", type=int, default=None, help="cut the shape to this many layers (checks)")
    ap.add_argument(
        "--shape",
        default="mini",
        help="mini, large, tiny or tiny-large (tiny ones: CPU logic checks), or a folder of shared/models",
    )
    ap.add_argument("--config", default=None, help="a config.json (or its folder); overrides --shape")
    ap.add_argument("--plan-only", action="store_true", help="print the memory plan and exit (no allocation)")
    ap.add_argument(
        "--gpu-memory-gib",
        type=float,
        default=None,
        help="one GPU's memory for the plan (default: this GPU's; 80)",
    )
    ap.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="the plan's share of GPU memory"
    )
    ap.add_argument(
        "--context", type=int, default=None, help="the plan's sequence length (default: the model's)"
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--quality-prompts", type=int, default=16)
    ap.add_argument("--quality-tokens", type=int, default=256)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--ttft", default="32768,131072")
    ap.add_argument(
        "--longest",
        type=int,
        default=262_000,
        help="the longest prompt tried (the model takes 262,144; 0: none)",
    )
    ap.add_argument("--decode-prompt-len", type=int, default=1024, help="prompt of the batch-1 decode row")
    ap.add_argument("--decode-tokens", type=int, default=128, help="new tokens of the batch-1 decode row")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args(argv)
    args.ttft = [int(x) for x in args.ttft.split(",") if x]
    device = torch.device("cpu" if args.plan_only else args.device)
    try:
        raw = read_config(args.config) if args.config else resolve_shape(args.shape)
        raw = cut_config(raw, args.layers) if args.layers else raw
        cfg = JambaConfig.from_dict(raw, source=args.config or f"shape {args.shape}")
        plan = target_plan(args, cfg, device)
    except (JambaStackError, ValueError) as e:  # a bad shape, config, cut or GPU count: say which
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plan.summary(), flush=True)
    if args.plan_only:
        print(json.dumps(plan.to_dict(), indent=1), flush=True)
        out_dir().joinpath(f"scale_plan{args.tag}.json").write_text(json.dumps(plan.to_dict(), indent=1))
        return 0
    cuda = device.type == "cuda"
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
                              "gpus": torch.cuda.device_count(),
                              "torch": torch.__version__, "args": vars(args), "method": __doc__,
                              "plan": plan.to_dict()}  # fmt: skip
    report["hardware"] = hw = measure_hardware(device, torch.bfloat16 if cuda else torch.float32, quick=True)
    out = out_dir() / f"scale_gpu{args.tag}.json"
    out.write_text(json.dumps(report, indent=1, default=str))  # the plan, before anything can fail
    if not args.skip_quality:
        tok = RESULTS / "scale-tok"
        write_tiny_tokenizer(tok, vocab_size=MINI_CONFIG["vocab_size"])
        try:
            report["quality_mini8"] = quality(args, device, tok)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            report["quality_mini8"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        log(f"quality: {report['quality_mini8']}")
        out.write_text(json.dumps(report, indent=1, default=str))
    key = f"{config_name(args.config) if args.config else args.shape}_{args.weights}_tp{args.tp}"

    def save(partial: dict[str, Any]) -> None:
        out.write_text(json.dumps({**report, key: partial}, indent=1, default=str))

    llm = None
    try:
        report[key] = full_rows(args, hw, save)
        llm = report[key].pop("llm")
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        report[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "method"}, indent=1, default=str), flush=True)
    if llm is not None:
        t = time.perf_counter()
        llm.close()
        log(f"closed the LLM (and its other ranks) in {time.perf_counter() - t:.1f} s")
        if args.tp > 1:
            os._exit(0)  # an NCCL group left open must not hold the exit (`Workers.stop`)
    return 0


if __name__ == "__main__":
    sys.exit(main())
