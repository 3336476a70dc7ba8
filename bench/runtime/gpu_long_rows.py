"""`bench.runtime.gpu`'s long-context rows: time to first token at 32K / 128K and the longest
context that fits, for ours and (where it can run) transformers. A mixin of its `Bench`: the rows
use the bench's models, clock, budget and peak-memory helpers."""

from __future__ import annotations

from typing import Any

import torch

from bench.common.gpu_models import prefill_floor, prompts
from bench.common.gpu_timing import elapsed, free_memory, log, short_error, timed_generate

_GIB = 2**30


class LongContextRows:
    def tf_long_skip(self, length: int) -> tuple[str | None, dict[str, Any]]:
        """Why transformers' pure-PyTorch prefill of `length` tokens is not attempted (None: try it),
        and the estimates behind it."""
        assert self.cfg is not None
        cfg = self.cfg
        # mamba_selective_scan's discrete_A, discrete_B and deltaB_u: float32 (b, d_inner, P, d_state) each.
        scan = 3 * cfg.mamba_d_inner * length * cfg.mamba_d_state * 4
        need = self.acct["total_bytes"] + scan
        est: dict[str, Any] = {"min_bytes": need, "scan_tensors_bytes": scan}
        ref = self.longest_tf_prefill()
        if ref is not None:
            est["seconds"] = ref[1] * length / ref[0]
            est["from"] = f"{ref[1]:.2f}s at P={ref[0]}, linear in P"
        if self.cuda:
            card = torch.cuda.get_device_properties(self.device).total_memory
            if need > card:
                return (
                    f"needs at least {need / _GIB:.0f} GiB (weights {self.acct['total_bytes'] / _GIB:.1f} + three "
                    f"float32 d_inner x P x d_state scan tensors {scan / _GIB:.0f}); the card has {card / _GIB:.0f} GiB"
                    + (f"; estimated time {est['seconds']:.0f}s ({est['from']})" if "seconds" in est else ""),
                    est,
                )
        left = self.args.budget_s - elapsed() - self.args.reserve_s
        if "seconds" in est and est["seconds"] > left:
            return (
                f"estimated {est['seconds']:.0f}s ({est['from']}), {left:.0f}s of the time budget left",
                est,
            )
        return None, est

    def longest_tf_prefill(self) -> tuple[int, float] | None:
        """(P, seconds) of transformers' longest batch-1 prefill measured so far."""
        best: tuple[int, float] | None = None
        for r in self.rows:
            tf = r.get("transformers")
            if not isinstance(tf, dict) or r.get("batch", 1) != 1:
                continue
            if r.get("kind") == "prefill":
                cand = (r["prompt_len"], tf["ms"] / 1e3)
            elif r.get("kind") == "ttft":
                cand = (r["prompt_len"], tf["ttft_s"])
            else:
                continue
            if best is None or cand[0] > best[0]:
                best = cand
        return best

    def longest_ours_ttft(self) -> tuple[int, float] | None:
        best: tuple[int, float] | None = None
        for r in self.rows:
            if r.get("kind") in ("ttft", "longest") and isinstance(r.get("ours"), dict):
                cand = (r["prompt_len"], r["ours"]["ttft_s"])
                if best is None or cand[0] > best[0]:
                    best = cand
        return best

    def one_token(self, side: str, ids: torch.Tensor, repeats: int) -> dict[str, Any]:
        """Time to first token of one prompt on one side, `repeats` runs; peak memory of the worst."""
        head, gen = self.sides([side])[side]
        times, peak, resident = [], None, None
        for _ in range(repeats):
            res, pk, resident = self.with_peak(lambda: timed_generate(self.clock, head, gen, ids, 1))
            times.append(res["total_s"])
            peak = pk if peak is None or pk is None else max(peak, pk)
            free_memory()
        return {
            "ttft_s": min(times),  # best of the runs: the first may include kernel compiles
            "times_s": times,
            "peak_gib": peak,
            "resident_gib": resident,
            "own_peak_gib": self.own_peak(side, peak, resident),
            "lm_head_calls": res["calls"],
        }

    def ttft_row(self, length: int, kind: str = "ttft", metric: str | None = None) -> dict[str, Any]:
        assert self.cfg is not None
        ids = prompts(self.cfg.vocab_size, 1, length, seed=300 + length, device=self.device)
        row: dict[str, Any] = {
            "metric": metric or f"TTFT P={length}",
            "kind": kind,
            "batch": 1,
            "prompt_len": length,
            "new_tokens": 1,
        }
        errors: dict[str, str] = {}
        if self.llm is None:
            errors["ours"] = "no engine (see the engine phase's failure)"
        else:
            try:
                row["ours"] = self.one_token("ours", ids, self.args.ttft_repeats)
            except Exception as e:  # noqa: BLE001
                errors["ours"] = short_error(e)
                free_memory()
        if kind == "ttft" and self.hf is not None:
            reason, est = self.tf_long_skip(length)
            row["transformers_estimate"] = est
            if reason is not None:
                row["transformers_skipped"] = reason
                log(f"  transformers skipped: {reason}")
            else:
                try:
                    row["transformers"] = self.one_token("transformers", ids, 1)
                except Exception as e:  # noqa: BLE001
                    errors["transformers"] = short_error(e)
                    free_memory()
        floor = prefill_floor(self.cfg, self.acct, length, self.hw)
        row["floor_ttft_s"] = length / floor
        row["errors"] = errors
        return row

    def longest_row(self) -> dict[str, Any]:
        """The plan's longest context, verified by one engine prefill of that many tokens (prompt of
        N - 1 + 1 new token), or of the longest the time budget allows."""
        assert self.cfg is not None
        plan = self.plan.get("this_shape", {})
        target = self.longest_target()
        if self.llm is not None:
            target = min(target, self.llm.engine.max_model_len)
        note = []
        if self.args.longest_cap and target == self.args.longest_cap:
            note.append(f"capped by --longest-cap {self.args.longest_cap:,}")
        ref = self.longest_ours_ttft()
        left = self.args.budget_s - elapsed() - 5
        if ref is not None and ref[0] < target:
            est = ref[1] * (target / ref[0]) ** 1.5  # attention is quadratic in P, the rest linear
            if est > left:
                fit = int(ref[0] * (max(left, 0) / ref[1]) ** (1 / 1.5)) // 1024 * 1024
                note.append(f"{target:,} estimated {est:.0f}s > {left:.0f}s left: verified at {fit:,}")
                target = fit
        # memory_plan's estimate for transformers' longest: weights + 3 float32 scan tensors per token.
        tf_longest = None
        if self.cuda:
            card = torch.cuda.get_device_properties(self.device).total_memory
            per_token = 3 * self.cfg.mamba_d_inner * self.cfg.mamba_d_state * 4
            tf_longest = max(card - self.acct["total_bytes"], 0) // per_token
        if ref is not None and target <= ref[0]:
            row = {
                "metric": f"longest context P={target:,}",
                "kind": "longest",
                "prompt_len": target,
                "errors": {},
            }
            row["skipped_verification"] = "; ".join(
                [*note, f"not longer than the TTFT row already measured at P={ref[0]:,}"]
            )
        else:
            row = self.ttft_row(target - 1, kind="longest", metric=f"longest context {target:,} tokens")
        row["planned_longest_context"] = plan.get("longest_context")
        row["planned_kv_tokens_that_fit"] = plan.get("kv_tokens_that_fit")
        row["max_position_embeddings"] = self.cfg.max_position_embeddings
        row["transformers_longest_estimate"] = tf_longest
        row["note"] = "; ".join(note)
        return row
