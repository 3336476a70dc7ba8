"""Cost of constrained decoding in our engine, CPU: mask time per token and tokens/s with and
without constraints, side by side in one run.

Two checkpoints with the tiny model's layers (random weights, float32):
  tiny-1k   the tiny test model and tokenizer (1,024 tokens);
  tiny-65k  the same layers with a 65,536-token vocab and a byte-level BPE of that size (trained
            once by `bench.structured.bpe65k` on Python sources), so the mask costs what Jamba's
            65,536-token vocab costs. The forward is tiny on purpose: the grammar's share of a
            step is at its largest here; with a real model it shrinks in proportion.

For batch 1 and 32, each row runs the same prompts constrained (JSON Schemas from
tests/data/schemas/, cycled over the batch; max_tokens = new tokens) and then unconstrained with
each request's max_tokens set to the length its constrained output had (`ignore_eos`), so both
sides make the same tokens and their batches shrink alike. Reported:
  mask us p50/p99   time to fill the step's grammar masks, all constrained rows at once
                    (`GrammarCompiler.fill_grammar_masks`: llguidance), per step, microseconds
                    (on the engine's mask thread, during the forward);
  budget us p50/p99 the rest of the grammar work per step: the budget logic before sampling
                    (`MaskWorker.finish`: closing-path rollouts, on the engine's thread after the
                    forward is launched; "prepare") plus advancing the matchers after it
                    (`GrammarMatcher.take`, with its closing-path check, after sampling; "take":
                    on a GPU only this part stands between two steps' forwards). The JSON keeps
                    both parts, and every timing's mean and total;
  tok/s             generated tokens / wall time of the whole `generate`, both sides;
  ratio             constrained / unconstrained tokens/s.

    .venv/bin/python -m bench.structured.engine         # ~5 min on 2 cores
    .venv/bin/python -m bench.structured.engine --quick # tiny-1k, 24 new tokens
    .venv/bin/python -m bench.structured.engine --models tiny-65k  # the 65k rows only
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common.paths import REPO, RESULTS
from bench.common.stats import nearest_rank
from bench.structured.bpe65k import bpe65k_tokenizer_json
from jamba_runtime import LLM, EngineConfig, LLMEngine, SamplingParams, StructuredOutput
from jamba_runtime.config import JambaConfig
from jamba_runtime.engine import engine as engine_module
from jamba_runtime.engine.ahead import InFlight
from jamba_runtime.structured.compiler import GrammarCompiler
from jamba_runtime.structured.matcher import GrammarMatcher
from jamba_runtime.structured.step_masks import MaskWorker
from jamba_runtime.tiny import TINY_CONFIG, make_tiny_model, write_random_checkpoint
from jamba_runtime.tokenizer.tiny import tiny_model_token_ids

DEFAULT_OUT = RESULTS / "structured.json"
SCHEMAS = [json.loads(p.read_text()) for p in sorted((REPO / "tests" / "data" / "schemas").glob("*.json"))]


def tiny_65k(directory: Path) -> Path:
    """The tiny model's layers with a 65,536-token vocab and the bench's 65k BPE tokenizer."""
    tokenizer_json = bpe65k_tokenizer_json()
    make_tiny_model(directory)  # tokenizer_config.json (chat template, special tokens) + files
    (directory / "tokenizer.json").write_text(tokenizer_json)
    config = JambaConfig.from_dict(
        {**TINY_CONFIG, **tiny_model_token_ids(), "vocab_size": 65536}, source="bench"
    )
    write_random_checkpoint(directory, config, seed=0)
    return directory


class Timers:
    """Times, per engine step: the grammar masks (`GrammarCompiler.fill_grammar_masks`), the
    rest of the grammar work (`MaskWorker.finish`, "prepare", plus `GrammarMatcher.take`; their
    sum is "budget"), and, for every
    step with a token to sample, the whole step and its sampling (`sample_sequences`, which on a
    GPU includes waiting for the step's forward; for a step launched ahead, `InFlight.read`,
    the wait for its tokens): what a constrained step costs beyond an unconstrained one, part by
    part."""

    def __init__(self) -> None:
        self.mask_us: list[float] = []
        self.budget_us: list[float] = []
        self.prepare_us: list[float] = []
        self.take_us: list[float] = []
        self.step_us: list[float] = []
        self.sample_us: list[float] = []
        self._mask = self._prepare = self._take = self._sample = 0.0
        self._orig = (
            LLMEngine.step,
            MaskWorker.finish,
            GrammarCompiler.fill_grammar_masks,
            GrammarMatcher.take,
            engine_module.sample_sequences,
            InFlight.read,
        )

    def __enter__(self) -> Timers:
        t = self
        step0, finish0, grammar0, take0, sample0, read0 = self._orig

        def timed(fn: Any, slot: str) -> Any:
            def wrapper(*args: Any) -> Any:
                t0 = time.perf_counter_ns()
                out = fn(*args)
                setattr(t, slot, getattr(t, slot) + (time.perf_counter_ns() - t0) / 1000)
                return out

            return wrapper

        def step(engine: LLMEngine) -> Any:
            t._mask = t._prepare = t._take = t._sample = 0.0
            t0 = time.perf_counter_ns()
            out = step0(engine)
            if t._sample:
                t.step_us.append((time.perf_counter_ns() - t0) / 1000)
                t.sample_us.append(t._sample)
            if t._mask or t._prepare or t._take:
                t.mask_us.append(t._mask)
                t.prepare_us.append(t._prepare)
                t.take_us.append(t._take)
                t.budget_us.append(t._prepare + t._take)
            return out

        LLMEngine.step = step  # type: ignore[method-assign]
        MaskWorker.finish = staticmethod(timed(finish0, "_prepare"))  # type: ignore[method-assign]
        GrammarCompiler.fill_grammar_masks = timed(grammar0, "_mask")  # type: ignore[method-assign]
        GrammarMatcher.take = timed(take0, "_take")  # type: ignore[method-assign]
        engine_module.sample_sequences = timed(sample0, "_sample")
        InFlight.read = timed(read0, "_sample")  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        LLMEngine.step, finish, GrammarCompiler.fill_grammar_masks, GrammarMatcher.take, sample, read = (
            self._orig
        )
        MaskWorker.finish = staticmethod(finish)  # type: ignore[method-assign]
        engine_module.sample_sequences = sample
        InFlight.read = read  # type: ignore[method-assign]

    def percentiles(self) -> dict[str, dict[str, float | None]]:
        """p50, p99, mean and total of each timing (microseconds), and how many steps it was
        taken in; None where nothing was timed. The mean and total show what the median hides: a
        few slow steps can cost more than all the others' excess together."""
        out: dict[str, dict[str, float | None]] = {}
        for name in ("mask_us", "budget_us", "prepare_us", "take_us", "step_us", "sample_us"):
            xs = getattr(self, name)
            out[name] = {q: nearest_rank(xs, v) if xs else None for q, v in (("p50", 0.5), ("p99", 0.99))}
            out[name] |= {
                "mean": statistics.fmean(xs) if xs else None,
                "total": float(sum(xs)) if xs else None,
                "steps": float(len(xs)),
            }
        return out


def run_row(llm: LLM, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    prompts = [f"Describe item {i} as JSON." for i in range(batch)]
    specs = [StructuredOutput(json_schema=SCHEMAS[i % len(SCHEMAS)]) for i in range(batch)]
    for spec in specs:
        llm.engine.check_structured(spec)  # compiled before timing (the cache is what requests hit)

    def constrained(r: int) -> list[SamplingParams]:
        return [
            SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=1000 * r + i, structured=s)
            for i, s in enumerate(specs)
        ]

    llm.generate(prompts, constrained(-1))  # warm-up
    free_rates, cons_rates, complete = [], [], []
    timers, free_timers = Timers(), Timers()
    for r in range(repeats):
        with timers:
            t0 = time.perf_counter()
            outs = llm.generate(prompts, constrained(r))
            cons_rates.append(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t0))
        complete.append(sum(o.finish_reason == "stop" for o in outs) / len(outs))
        # The same number of tokens per request, unconstrained: the batch shrinks the same way.
        plain = [
            SamplingParams(max_tokens=len(o.token_ids), temperature=1.0, seed=i, ignore_eos=True)
            for i, o in enumerate(outs)
        ]
        with free_timers:
            t0 = time.perf_counter()
            outs = llm.generate(prompts, plain)
            free_rates.append(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t0))
    free, cons = statistics.median(free_rates), statistics.median(cons_rates)
    ours, theirs = timers.percentiles(), free_timers.percentiles()
    return {
        "batch": batch,
        "new_tokens": new_tokens,
        "mask_us": ours["mask_us"],
        "budget_us": ours["budget_us"],
        "prepare_us": ours["prepare_us"],  # the budget logic's part before sampling
        "take_us": ours["take_us"],  # and after it, between the steps
        # A step with a token to sample, whole and its sampling, constrained beside unconstrained.
        "step_us": {"constrained": ours["step_us"], "unconstrained": theirs["step_us"]},
        "sample_us": {"constrained": ours["sample_us"], "unconstrained": theirs["sample_us"]},
        "tokens_per_s": {"unconstrained": free, "constrained": cons, "ratio": cons / free},
        # share of constrained outputs that ended complete ("stop"); a schema whose shortest
        # completion is longer than new_tokens ends "length" (many_required_fields needs ~100)
        "complete": min(complete),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--models",
        nargs="+",
        choices=["tiny-1k", "tiny-65k"],
        default=None,
        help="default: both (--quick: tiny-1k)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    new_tokens = 24 if args.quick else args.new_tokens
    repeats = 1 if args.quick else args.repeats
    tmp = Path(tempfile.mkdtemp())
    names = args.models or (["tiny-1k"] if args.quick else ["tiny-1k", "tiny-65k"])
    models = {}
    if "tiny-1k" in names:
        models["tiny-1k"] = make_tiny_model(tmp / "tiny")
    if "tiny-65k" in names:
        models["tiny-65k"] = tiny_65k(tmp / "tiny65k")
    rows = []
    try:
        for name, path in models.items():
            llm = LLM(model=path, engine=EngineConfig(max_num_seqs=32))
            for batch in (1, 32):
                row = {
                    "model": name,
                    "vocab": llm.config.vocab_size,
                    **run_row(llm, batch, new_tokens, repeats),
                }
                rows.append(row)
                print_row(row, header=len(rows) == 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "method": __doc__,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


def print_row(row: dict, header: bool) -> None:
    if header:
        print(
            f"{'model':9s} {'vocab':>6s} {'batch':>5s} {'mask us p50/p99':>18s} {'budget us p50/p99':>18s} "
            f"{'tok/s free':>10s} {'tok/s json':>10s} {'ratio':>6s} {'complete':>8s} "
            f"{'step us p50 json/free':>22s} {'sampling us p50 json/free':>26s}"
        )
    m, t, r = row["mask_us"], row["budget_us"], row["tokens_per_s"]
    st, sa = row["step_us"], row["sample_us"]
    print(
        f"{row['model']:9s} {row['vocab']:>6d} {row['batch']:>5d} {m['p50']:>8.0f} / {m['p99']:<7.0f} "
        f"{t['p50']:>8.0f} / {t['p99']:<7.0f} {r['unconstrained']:>10.1f} {r['constrained']:>10.1f} {r['ratio']:>6.2f} {row['complete']:>8.0%} "
        f"{st['constrained']['p50']:>11.0f} / {st['unconstrained']['p50']:<8.0f} "
        f"{sa['constrained']['p50']:>12.0f} / {sa['unconstrained']['p50']:<8.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
