"""Our Jamba runtime vs transformers' `JambaForCausalLM` on one GPU, bf16, at the Jamba-1.5-Mini shape
cut to a few layers, side by side in one run, with the hardware floor of every row.

    python -m bench.runtime.gpu                          # ~3-6 min on an H100, the rows of issue 4
    python -m bench.runtime.gpu --rows decode,prefill    # a subset, in the fixed order below
    python -m bench.runtime.gpu --quick                  # ~2 min: shorter lengths, fewer repeats
    python -m bench.runtime.gpu --device cpu --quick     # the same code on CPU: tiny shape, float32

Rows, cheap and most important first (`--rows` picks; names in brackets):
  [decode]     batch 1, prompt 1K, 128 new tokens: ms/token and fraction of the bandwidth floor;
               ours through the engine, ours as a plain loop over the model, transformers.
  [prefill]    batch-1 forward over P=2048 tokens: tokens/s and the logits check (ours vs theirs).
  [concurrent] 64 requests of 2K-token prompts, 128 new tokens each, all submitted at once to our
               engine (continuous batching, chunked prefill): total tokens/s; transformers'
               batched `generate` at 64 side by side (its OOM recorded), and, when that fails, both
               sides again at a smaller batch (`--tf-ref-batch`, labelled as such).
  [ttft]       prompts of 32K and 128K tokens, 1 new token: time to first token and peak GPU memory.
               Transformers is skipped, with the reason recorded, when its pure-PyTorch scan cannot
               fit the card (it holds three float32 (d_inner, P, d_state) tensors) or its time,
               extrapolated linearly in P from its longest measured prefill, passes the budget.
  [longest]    the longest context that fits on the card for this shape, from
               `jamba_runtime.engine.memory_plan` (weights, KV bytes per token, Mamba slots, one step's
               activations), capped by the model's `max_position_embeddings`; then one prefill at
               that length (or the longest the time budget allows) through the engine.
  [structured] tokens/s under JSON Schema constraints vs the same requests unconstrained (same
               tokens made), batch 1 and 32 (`--structured-batches`), 65,536-token BPE tokenizer.

Both models hold the same random weights, made on the device from a fixed seed (no checkpoint: the
8-layer cut is ~27 GB in bf16), shared tensor for tensor (`bench.common.gpu_models`). One engine serves
every row: `max_num_seqs` = the concurrent batch, prefill chunks of `--chunk` tokens
(`max_num_batched_tokens`), a cache sized for the concurrent row and the longest prompt.

Method (also stored in the JSON):
  decode      greedy, ignore eos. A forward hook on each side's `lm_head` (ours: a wrapper around
              the engine runner's step, as a CUDA graph replay calls no forward) records a CUDA
              event and the number of logits rows per step; decode time runs from the step that
              yields the last sequence's first token to the step that yields the final token
              (N - 1 steps).
              ms/token = decode time / (N - 1); tokens/s = tokens sampled in that window / its time.
  concurrent  total tokens/s = b * N / (submit -> final token), prefill included; decode tokens/s as
              above (sequences admitted in prefill chunks finish at different steps).
  prefill     P / median time of one batch-1 forward (full logits), CUDA events, sides alternating.
  ttft        submit -> the LM-head call that yields token 1 (ours: engine, chunked prefill; theirs:
              `generate(max_new_tokens=1)`); peak = `torch.cuda.max_memory_allocated` during the
              call; "own peak" = weights (+ our engine's cache for ours) + what the call added.
  floors      decode: bytes read per step (weights but the embedding and unrouted experts, KV at the
              mean context, Mamba state read + written) / measured copy bandwidth. Prefill and TTFT:
              matmul FLOPs (2 x active params x P + causal attention) / measured bf16 matmul rate.

A row or side that fails (OOM, an API difference) is recorded and the rest still run; the JSON is
rewritten after every row (`$OUT/runtime_gpu.json` when OUT is set, else bench/results/). Exit
status 1 only when no row measured anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# No network on the device: never let transformers reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from bench.common.gpu_models import MINI_CONFIG, accounting, build_models, cut_config, layer_map, make_llm  # noqa: E402
from bench.common.gpu_timing import (  # noqa: E402
    Clock,
    device_info,
    elapsed,
    free_memory,
    log,
    measure_hardware,
    short_error,
    software_info,
)
from bench.common.paths import out_dir  # noqa: E402
from bench.runtime.gpu_args import METHOD, parse_args  # noqa: E402
from bench.runtime.gpu_long_rows import LongContextRows  # noqa: E402
from bench.runtime.gpu_memory_plan import MemoryPlanRows  # noqa: E402
from bench.runtime.gpu_report import fmt, format_table, row_notes, summary  # noqa: E402
from bench.runtime.gpu_short_rows import ShortContextRows  # noqa: E402
from bench.runtime.gpu_structured_rows import StructuredRows  # noqa: E402
from jamba_runtime import JambaForCausalLM  # noqa: E402
from jamba_runtime.config import JambaConfig  # noqa: E402
from jamba_runtime.kernels import selective_scan  # noqa: E402
from jamba_runtime.tiny import TINY_CONFIG  # noqa: E402
from jamba_runtime.tokenizer.tiny import tiny_model_token_ids, write_tiny_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()

_GIB = 2**30

# ---- the bench ------------------------------------------------------------------------------------


class Bench(ShortContextRows, LongContextRows, MemoryPlanRows, StructuredRows):
    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, out: Path) -> None:
        self.args, self.device, self.dtype, self.out = args, device, dtype, out
        self.clock = Clock(device)
        self.rows: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []
        self.hw: dict[str, Any] = {}
        self.model_info: dict[str, Any] = {}
        self.ours: JambaForCausalLM | None = None
        self.hf: Any = None
        self.llm: Any = None
        self.structured_llm: Any = None
        self.cfg: JambaConfig | None = None
        self.acct: dict[str, Any] = {}
        self.table = ""
        self.tok_dir: Path | None = None
        self.plan: dict[str, Any] = {}
        self.engine_cache_bytes: int | None = None

    # -- bookkeeping
    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / _GIB if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def with_peak(self, fn: Callable[[], Any]) -> tuple[Any, float | None, float | None]:
        """(fn(), peak GiB during the call, GiB allocated before it); both None on CPU."""
        resident = torch.cuda.memory_allocated(self.device) / _GIB if self.cuda else None
        self.reset_peak()
        result = fn()
        return result, self.peak_gib(), resident

    def own_peak(self, side: str, peak: float | None, resident: float | None) -> float | None:
        """The peak this side would have alone: weights (+ our engine's cache) + what the call added."""
        if peak is None or resident is None:
            return None
        own = self.acct["total_bytes"] / _GIB + (peak - resident)
        if side == "ours" and self.engine_cache_bytes is not None:
            own += self.engine_cache_bytes / _GIB
        return own

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run `fn`, record its wall time and peak memory; a failure is recorded and returns None."""
        self.reset_peak()
        t0 = time.perf_counter()
        log(f"{name} ...")
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - record and go on
            self.failures.append({"phase": name, "error": short_error(e)})
            log(f"{name} FAILED: {type(e).__name__}: {str(e)[:300]}")
            free_memory()
            return None
        finally:
            rec = {"phase": name, "seconds": time.perf_counter() - t0, "peak_gib": self.peak_gib()}
            self.phases.append(rec)
            peak = f", peak {rec['peak_gib']:.1f} GiB" if rec["peak_gib"] is not None else ""
            log(f"{name} done in {rec['seconds']:.1f}s{peak}")
            self.save()

    def save(self) -> None:
        result = {
            "bench": "runtime_gpu",
            "command": " ".join(["python -m", __spec__.name, *sys.argv[1:]]),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "dtype": str(self.dtype).removeprefix("torch."),
            "hardware": {**self.hw, **device_info(self.device)},
            "software": software_info(),
            "model": self.model_info,
            "memory_plan": self.plan,
            "engine_cache_gib": None if self.engine_cache_bytes is None else self.engine_cache_bytes / _GIB,
            "method": METHOD,
            "rows": self.rows,
            "phases": self.phases,
            "failures": self.failures,
            "table": self.table,
            "elapsed_s": elapsed(),
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out)

    # -- setup
    def setup(self, raw: dict[str, Any], full_raw: dict[str, Any]) -> bool:
        args = self.args
        hw = self.phase("hardware probe", lambda: measure_hardware(self.device, self.dtype, args.quick))
        if hw is None:  # floors need it; keep going with the DESIGN numbers of an H100
            hw = {"matmul_flops": 750e12, "copy_bandwidth_bytes_s": 2.97e12, "assumed": True}
        self.hw = hw
        log(
            f"hardware: {self.dtype} matmul {hw['matmul_flops'] / 1e12:.3g} TFLOP/s, copy bandwidth "
            f"{hw['copy_bandwidth_bytes_s'] / 1e9:,.0f} GB/s"
        )
        built = self.phase("build models", lambda: build_models(raw, self.device, self.dtype, args.seed))
        if built is None:
            return False
        self.ours, self.hf, info = built
        if args.skip_transformers and self.hf is not None:
            self.hf = None
            info["transformers_error"] = "skipped (--skip-transformers)"
        self.cfg = self.ours.config
        self.acct = accounting(self.ours, self.cfg)
        self.model_info = {
            "config": self.cfg.to_dict(),
            "layers": layer_map(self.cfg),
            "accounting": self.acct,
            **info,
        }
        if self.hf is None:
            self.failures.append(
                {"phase": "build transformers", "error": info.get("transformers_error", "?")}
            )
        tf = (
            f"attn {info.get('transformers_attn_implementation')}, experts "
            f"{info.get('transformers_experts_implementation')}"
            if self.hf is not None
            else info.get("transformers_error")
        )
        log(
            f"model: {self.cfg.num_hidden_layers} layers [{self.model_info['layers']}], "
            f"{self.acct['total_params'] / 1e9:.2f}B params, {self.acct['total_bytes'] / _GIB:.1f} GiB (shared "
            f"with transformers), active matmul params/token {self.acct['active_matmul_params_per_token'] / 1e9:.2f}B; "
            f"transformers: {tf}"
        )
        self.phase("memory plan", lambda: self.make_plan(full_raw))
        if {"decode", "concurrent", "ttft", "longest"} & set(args.rows):
            self.llm = self.phase("engine (LLM over the shared model)", self._make_llm)
        return True

    def _make_llm(self) -> Any:
        assert self.ours is not None and self.cfg is not None
        args = self.args
        self.tok_dir = Path(tempfile.mkdtemp(prefix="jamba-bench-tok-"))
        # The engine detokenises its output: any tokenizer with the model's vocab size will do.
        write_tiny_tokenizer(self.tok_dir, vocab_size=self.cfg.vocab_size)
        batch = max(args.concurrent, args.tf_ref_batch, 1)
        tokens = max(args.decode_prompt_len, args.concurrent_prompt_len) + args.new_tokens + 16
        capacity = max([*args.ttft_lens, 0]) + 16
        if "longest" in args.rows:
            capacity = max(capacity, self.longest_target() + 16)
        before = torch.cuda.memory_allocated(self.device) if self.cuda else None
        llm = make_llm(self.ours, self.tok_dir, batch, tokens, args.chunk, capacity)
        if before is not None:
            self.engine_cache_bytes = torch.cuda.memory_allocated(self.device) - before
        log(
            f"engine: max_num_seqs {batch}, max_num_batched_tokens {args.chunk}, max_model_len "
            f"{llm.engine.max_model_len:,}, cache {fmt(None if before is None else self.engine_cache_bytes / _GIB, '.2f')} GiB"
        )
        return llm

    # -- rows
    def run_row(self, metric: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.reset_peak()
        t0 = time.perf_counter()
        log(f"{metric} ...")
        try:
            row = fn()
        except Exception as e:  # noqa: BLE001 - record and go on
            row = {"metric": metric, "errors": {"row": short_error(e)}}
        row["seconds"] = time.perf_counter() - t0
        row["peak_gib"] = self.peak_gib()
        self.rows.append(row)
        for side, err in row.get("errors", {}).items():
            self.failures.append({"phase": metric, "side": side, "error": err})
            log(f"  {side} FAILED: {err[:300]}")
        free_memory()
        log(
            f"{row['metric']}: {summary(row)} ({row['seconds']:.1f}s, peak {fmt(row['peak_gib'], '.1f')} GiB)"
        )
        self.save()
        return row

    # -- long prompts
    def run(self, raw: dict[str, Any], full_raw: dict[str, Any]) -> int:
        args = self.args
        if not self.setup(raw, full_raw):
            self.finish()
            return 1
        n = args.new_tokens
        plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
        if "decode" in args.rows:
            pd = args.decode_prompt_len
            plan.append(
                (
                    "decode",
                    f"decode b=1 P={pd} N={n}",
                    lambda: self.generate_row(
                        f"decode b=1 P={pd} N={n}",
                        "decode",
                        1,
                        pd,
                        n,
                        ["ours", "ours_plain", "transformers"],
                        args.repeats,
                        seed=201,
                    ),
                )
            )
        if "prefill" in args.rows:
            for p in args.prefill_lens:
                plan.append(("prefill", f"prefill b=1 P={p}", lambda p=p: self.prefill_row(p)))
        if "concurrent" in args.rows:
            b, pc = args.concurrent, args.concurrent_prompt_len
            plan.append(
                (
                    "concurrent",
                    f"concurrent {b} x (P={pc} + N={n})",
                    lambda: self.generate_row(
                        f"concurrent {b} x (P={pc} + N={n})",
                        "concurrent",
                        b,
                        pc,
                        n,
                        ["ours", "transformers"],
                        args.concurrent_repeats,
                        seed=202,
                    ),
                )
            )
            rb = args.tf_ref_batch
            plan.append(
                (
                    "concurrent-ref",
                    f"concurrent {rb} x (P={pc} + N={n}) [transformers reference batch]",
                    lambda: self.generate_row(
                        f"concurrent {rb} x (P={pc} + N={n}) [transformers reference batch]",
                        "concurrent",
                        rb,
                        pc,
                        n,
                        ["ours", "transformers"],
                        args.concurrent_repeats,
                        seed=203,
                    ),
                )
            )
        if "ttft" in args.rows:
            for length in args.ttft_lens:
                for variant in args.scan_variants or [None]:
                    metric = f"TTFT P={length}" + (f" [scan {variant}]" if variant else "")
                    plan.append(
                        (
                            "ttft",
                            metric,
                            lambda length=length, v=variant, m=metric: self.ttft_scan(length, v, m),
                        )
                    )
        if "longest" in args.rows:
            plan.append(("longest", "longest context", self.longest_row))
        if "structured" in args.rows:
            for b in args.structured_batches:
                plan.append(("structured", f"structured b={b}", lambda b=b: self.structured_row(b)))
        for kind, metric, fn in plan:
            skip = self.over_budget(kind, metric)
            if skip:
                self.rows.append({"metric": metric, "skipped": skip})
                log(f"{metric}: skipped ({skip})")
                self.save()
                continue
            self.run_row(metric, fn)
        return self.finish()

    def ttft_scan(self, length: int, variant: str | None, metric: str) -> dict[str, Any]:
        """The TTFT row with the given selective-scan prefill kernel (None: the runtime's default)."""
        saved = selective_scan.SCAN_VARIANT
        selective_scan.SCAN_VARIANT = variant or saved
        try:
            row = self.ttft_row(length, metric=metric)
        finally:
            selective_scan.SCAN_VARIANT = saved
        row["scan_variant"] = variant or saved
        return row

    def over_budget(self, kind: str, metric: str) -> str | None:
        """Why a row is not run (time budget, or a reference row with nothing to add), or None."""
        left = self.args.budget_s - elapsed()
        if left <= 0:
            return f"past the {self.args.budget_s:.0f}s time budget"
        if kind == "concurrent-ref":
            main_row = next((r for r in self.rows if r.get("kind") == "concurrent"), None)
            if self.hf is None:
                return "no transformers model"
            if main_row is not None and "transformers" in main_row:
                return "transformers ran at the full batch: no smaller reference needed"
            if self.args.tf_ref_batch < 1 or self.args.tf_ref_batch >= self.args.concurrent:
                return "--tf-ref-batch off"
        return None

    def finish(self) -> int:
        if self.tok_dir is not None:
            shutil.rmtree(self.tok_dir, ignore_errors=True)
        self.table = format_table(self.rows)
        print("\n" + self.table + "\n", flush=True)
        for r in self.rows:
            for line in row_notes(r):
                print(f"{r['metric']}: {line}")
        for key, p in self.plan.items():
            if "summary" in p:
                print(f"memory plan ({key}):\n{p['summary']}")
        for ph in self.phases:
            print(f"phase {ph['phase']}: {ph['seconds']:.1f}s, peak {fmt(ph['peak_gib'], '.1f')} GiB")
        for f in self.failures:
            print(f"FAILED {f.get('phase')} {f.get('side', '')}: {f['error'][:400]}")
        print(
            f"hardware: {device_info(self.device).get('name')}, matmul {self.hw.get('matmul_flops', 0) / 1e12:.3g} "
            f"TFLOP/s, copy bandwidth {self.hw.get('copy_bandwidth_bytes_s', 0) / 1e9:,.0f} GB/s"
        )
        print(f"total time {elapsed():.0f}s")
        self.save()
        print(f"wrote {self.out}", flush=True)
        measured = any(any(s in r for s in ("ours", "ours_plain", "transformers")) for r in self.rows)
        return 0 if measured else 1


# ---- entry ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, (__doc__ or "").split("\n\n")[0])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device: run on the GPU machine, or pass --device cpu for a logic check", file=sys.stderr
        )
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # a logic check on a shared box: spinning OpenMP threads only add noise
    if args.config is not None:
        full_raw = json.loads(args.config.read_text(encoding="utf-8"))
    elif device.type == "cuda":
        full_raw = MINI_CONFIG
    else:
        full_raw = {**TINY_CONFIG, **tiny_model_token_ids()}
    try:
        raw = cut_config(full_raw, args.layers)
    except (ValueError, KeyError) as e:
        print(f"config: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    out = args.out or out_dir() / "runtime_gpu.json"
    log(
        f"device {device} ({device_info(device).get('name')}), {dtype}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; rows {','.join(args.rows)}; decode P={args.decode_prompt_len} N={args.new_tokens}; "
        f"prefill P={args.prefill_lens}; concurrent {args.concurrent} x P={args.concurrent_prompt_len} (tf ref "
        f"{args.tf_ref_batch}); TTFT P={args.ttft_lens}; chunk {args.chunk}; budget {args.budget_s:.0f}s"
    )
    return Bench(args, device, dtype, out).run(raw, full_raw)


if __name__ == "__main__":
    sys.exit(main())
