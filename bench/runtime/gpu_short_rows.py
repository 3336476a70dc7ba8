"""`bench.runtime.gpu`'s short-context rows: greedy generation at a batch and prompt length on
each side (decode and 64-concurrent rows, with floors and greedy agreement) and batch-1 prefill
with a logits check. A mixin of its `Bench`: the rows use the bench's models, engine, clock and
peak-memory helpers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from bench.common.gpu_models import (
    common_prefix,
    compare_logits,
    decode_step_bytes,
    hf_generate,
    ours_engine_generate,
    ours_plain_generate,
    prefill_floor,
    prompts,
)
from bench.common.gpu_timing import free_memory, log, short_error, timed_generate

Gen = Callable[[torch.Tensor, int], list[list[int]]]


class ShortContextRows:
    def sides(self, names: list[str]) -> dict[str, tuple[Any, Gen]]:
        assert self.ours is not None and self.cfg is not None
        ours, hf, llm = self.ours, self.hf, self.llm
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        out: dict[str, tuple[Any, Gen]] = {}
        if "ours" in names and llm is not None:
            # The runner, not the LM head: a decode step replayed from a CUDA graph calls no forward.
            out["ours"] = (llm.engine.runner, lambda x, k: ours_engine_generate(llm, x, k))
        if "ours_plain" in names and not self.args.no_plain:
            out["ours_plain"] = (ours.lm_head, lambda x, k: ours_plain_generate(ours, x, k))
        if "transformers" in names and hf is not None:
            out["transformers"] = (hf.lm_head, lambda x, k: hf_generate(hf, x, k, pad))
        return out

    def generate_row(
        self, metric: str, kind: str, b: int, p: int, n: int, names: list[str], repeats: int, seed: int
    ) -> dict[str, Any]:
        """Greedy generation of `n` tokens after `p`-token prompts at batch `b` on each side: warm-up,
        then `repeats` timed runs alternating sides; decode and total rates, peaks, greedy agreement."""
        assert self.cfg is not None
        ids = prompts(self.cfg.vocab_size, b, p, seed=seed, device=self.device)
        sides = self.sides(names)
        row: dict[str, Any] = {"metric": metric, "kind": kind, "batch": b, "prompt_len": p, "new_tokens": n}
        errors: dict[str, str] = {}
        for side, (_, gen) in list(sides.items()):  # warm-up: compiles, allocator, cuBLAS heuristics
            try:
                gen(ids, min(n, 16))
                self.clock.sync()
            except Exception as e:  # noqa: BLE001
                errors[side] = short_error(e)
                del sides[side]
                free_memory()
        log("  warm-up done: " + ", ".join(sides) + (f"; failed: {', '.join(errors)}" if errors else ""))
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        peaks: dict[str, tuple[float | None, float | None]] = {}
        for _ in range(repeats):
            for side, (head, gen) in list(sides.items()):
                try:
                    res, peak, resident = self.with_peak(
                        lambda: timed_generate(self.clock, head, gen, ids, n)
                    )
                    runs[side].append(res)
                    old = peaks.get(side, (None, resident))[0]
                    peaks[side] = (peak if old is None or peak is None else max(old, peak), resident)
                except Exception as e:  # noqa: BLE001
                    errors[side] = short_error(e)
                    del sides[side]
                    free_memory()
        tokens: dict[str, list[list[int]]] = {}
        for side, rs in runs.items():
            if not rs:
                continue
            d = statistics.median(r["decode_s"] for r in rs)
            window = statistics.median(r["window_tokens"] for r in rs)
            total = statistics.median(r["total_s"] for r in rs)
            peak, resident = peaks.get(side, (None, None))
            row[side] = {
                "ms_per_step": 1e3 * d / (n - 1),
                "tokens_per_s": window / d if d > 0 else math.nan,
                "total_tokens_per_s": b * n / total,
                "total_s": total,
                "first_token_s": statistics.median(r["first_token_s"] for r in rs),
                "decode_s": [r["decode_s"] for r in rs],
                "window_tokens": window,
                "lm_head_calls": rs[-1]["calls"],
                "peak_gib": peak,
                "own_peak_gib": self.own_peak(side, peak, resident),
            }
            tokens[side] = rs[-1]["tokens"]
        for x, y in [("ours", "transformers"), ("ours", "ours_plain"), ("ours_plain", "transformers")]:
            if x in tokens and y in tokens:
                prefix = [common_prefix(s, t) for s, t in zip(tokens[x], tokens[y])]
                row[f"greedy_{x}_vs_{y}"] = {
                    "identical": tokens[x] == tokens[y],
                    "min_agreeing_prefix": min(prefix),
                    "mean_agreeing_prefix": statistics.fmean(prefix),
                }
        assert self.cfg is not None
        step = decode_step_bytes(self.cfg, self.acct, b, p + n / 2)
        bw = self.hw["copy_bandwidth_bytes_s"]
        row["floor_step_bytes"] = step
        row["floor_ms_per_step"] = 1e3 * step / bw
        row["floor_tokens_per_s"] = b * bw / step
        prefill_s = b * p / prefill_floor(self.cfg, self.acct, p, self.hw)
        row["floor_total_tokens_per_s"] = b * n / (prefill_s + n * step / bw)
        row["errors"] = errors
        return row

    def prefill_row(self, p: int) -> dict[str, Any]:
        assert self.ours is not None and self.cfg is not None
        ours, hf = self.ours, self.hf
        ids = prompts(self.cfg.vocab_size, 1, p, seed=100 + p, device=self.device)
        sides: dict[str, Callable[[], Any]] = {"ours": lambda: ours(ids)}
        if hf is not None:
            sides["transformers"] = lambda: hf(input_ids=ids).logits
        row: dict[str, Any] = {"metric": f"prefill b=1 P={p}", "kind": "prefill", "batch": 1, "prompt_len": p}
        errors: dict[str, str] = {}
        logits: dict[str, torch.Tensor] = {}
        for side, fn in list(sides.items()):  # warm-up, and the logits compared
            try:
                with torch.inference_mode():
                    logits[side] = fn()
                self.clock.sync()
            except Exception as e:  # noqa: BLE001
                errors[side] = short_error(e)
                del sides[side]
                free_memory()
        if len(logits) == 2:
            row.update(compare_logits(logits["ours"], logits["transformers"]))
        elif "ours" in logits:
            row["logits_finite"] = bool(torch.isfinite(logits["ours"]).all())
        logits.clear()
        free_memory()
        times: dict[str, list[float]] = {s: [] for s in sides}
        for _ in range(self.args.prefill_repeats):
            for side, fn in list(sides.items()):
                try:
                    with torch.inference_mode():
                        times[side].append(self.clock.time(fn))
                except Exception as e:  # noqa: BLE001
                    errors[side] = short_error(e)
                    del sides[side]
                    free_memory()
        for side, ts in times.items():
            if ts:
                t = statistics.median(ts)
                row[side] = {"tokens_per_s": p / t, "ms": 1e3 * t, "times_s": ts}
        row["floor_tokens_per_s"] = prefill_floor(self.cfg, self.acct, p, self.hw)
        row["floor_ms"] = 1e3 * p / row["floor_tokens_per_s"]
        row["errors"] = errors
        return row
