"""The printed report of `bench.runtime.gpu`: one table over rows of different kinds (each in
its own unit, with the speedup over transformers and the fraction of the hardware floor) and the
detail lines under it."""

from __future__ import annotations

import math
from typing import Any

from bench.common.tables import markdown_table


# ---- output ---------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# kind -> (unit, per-side key, floor key, lower is better, number format)
_VIEW: dict[str, tuple[str, str, str, bool, str]] = {
    "decode": ("ms/token", "ms_per_step", "floor_ms_per_step", True, ".2f"),
    "prefill": ("tok/s", "tokens_per_s", "floor_tokens_per_s", False, ",.0f"),
    "concurrent": ("total tok/s", "total_tokens_per_s", "floor_total_tokens_per_s", False, ",.0f"),
    "ttft": ("s to 1st token", "ttft_s", "floor_ttft_s", True, ".3f"),
    "longest": ("s to 1st token", "ttft_s", "floor_ttft_s", True, ".3f"),
    "structured": ("tok/s, JSON Schema", "tokens_per_s", "floor_tokens_per_s", False, ",.0f"),
}


def view(row: dict[str, Any]) -> dict[str, Any]:
    """The row's headline numbers: one value per side in the row's unit, our speedup over
    transformers, the floor and our fraction of it (1.0 = at the hardware limit)."""
    unit, key, floor_key, lower, spec = _VIEW[row["kind"]]
    val = {s: row[s].get(key) for s in ("ours", "ours_plain", "transformers") if isinstance(row.get(s), dict)}
    best = val.get("ours", val.get("ours_plain"))
    tf, floor = val.get("transformers"), row.get(floor_key)
    speedup = frac = None
    if best and tf:
        speedup = tf / best if lower else best / tf
    if best and floor:
        frac = floor / best if lower else best / floor
    return {"unit": unit, "values": val, "speedup": speedup, "floor": floor, "of_floor": frac, "spec": spec}


def summary(row: dict[str, Any]) -> str:
    if "kind" not in row:
        return "nothing measured"
    v = view(row)
    parts = [f"{s} {fmt(x, v['spec'])}" for s, x in v["values"].items()]
    parts.append(f"floor {fmt(v['floor'], v['spec'])} {v['unit']}")
    if v["of_floor"] is not None:
        parts.append(f"{v['of_floor']:.1%} of floor")
    return ", ".join(parts)


def check_cell(r: dict[str, Any]) -> str:
    kind = r["kind"]
    if kind == "prefill":
        cell = f"rel err {r['logits_rel_err']:.1e}" if "logits_rel_err" in r else "-"
    elif kind in ("decode", "concurrent"):
        g = r.get("greedy_ours_vs_transformers") or r.get("greedy_ours_plain_vs_transformers")
        cell = f"greedy prefix {g['min_agreeing_prefix']}/{r['new_tokens']}" if g else "-"
        if kind == "concurrent":
            dec = [f"{s} {r[s]['tokens_per_s']:,.0f}" for s in ("ours", "transformers") if s in r]
            cell += f"; decode tok/s {' / '.join(dec) or '-'} (ceiling {r['floor_tokens_per_s']:,.0f})"
    elif kind == "structured":
        m, b = r["mask_us"], r["budget_us"]
        cell = (
            f"unconstrained {r['unconstrained_tokens_per_s']:,.0f} tok/s, ratio {r['ratio']:.3f}; grammar us/step "
            f"masks {m['p50']:.0f}/{m['p99']:.0f}, budget {b['p50']:.0f}/{b['p99']:.0f} (p50/p99); "
            f"complete {r['complete']:.0%}"
        )
        if "step_us" in r:  # steps and sampling, constrained / unconstrained
            st, sa = r["step_us"], r["sample_us"]
            cell += (
                f"; p50 us step {st['constrained']['p50']:.0f} / {st['unconstrained']['p50']:.0f}, "
                f"sampling {sa['constrained']['p50']:.0f} / {sa['unconstrained']['p50']:.0f}"
            )
            if st["constrained"].get("mean") is not None:
                cell += (
                    f"; mean us step {st['constrained']['mean']:.0f} / {st['unconstrained']['mean']:.0f} "
                    f"over {st['constrained']['steps']:.0f} / {st['unconstrained']['steps']:.0f} steps"
                )
        if r.get("take_us", {}).get("mean") is not None:  # the budget logic before / after sampling
            pre, take = r["prepare_us"], r["take_us"]
            cell += (
                f"; mean us budget {b['mean']:.0f} = prepare {pre['mean']:.0f} + take {take['mean']:.0f} "
                f"(take p99 {take['p99']:.0f}), masks {m['mean']:.0f}"
            )
    else:
        cell = r.get("transformers_skipped") or r.get("skipped_verification") or r.get("note") or "-"
        if kind == "longest":
            cell = f"plan {fmt(r.get('planned_longest_context'), ',')}; " + cell
        cell = cell[:120]
    if r.get("errors"):
        cell += " FAILED: " + ",".join(r["errors"])
    return cell


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "row",
        "unit",
        "ours",
        "ours plain",
        "transformers",
        "speedup",
        "floor",
        "of floor",
        "peak ours GiB",
        "peak tf GiB",
        "check / note",
    )
    lines = []
    for r in rows:
        if "skipped" in r or "kind" not in r:
            reason = r.get("skipped") or next(iter(r.get("errors", {}).values()), "?")
            lines.append((r["metric"], *["-"] * 9, f"skipped/failed: {reason[:80]}"))
            continue
        v = view(r)
        spec = v["spec"]

        def peak(side: str, r: dict[str, Any] = r) -> str:
            d = r.get(side)
            return fmt(d.get("own_peak_gib"), ".1f") if isinstance(d, dict) else "-"

        lines.append(
            (
                r["metric"],
                v["unit"],
                fmt(v["values"].get("ours"), spec),
                fmt(v["values"].get("ours_plain"), spec),
                fmt(v["values"].get("transformers"), spec),
                fmt(v["speedup"], ".2f") + ("x" if v["speedup"] is not None else ""),
                fmt(v["floor"], spec),
                fmt(v["of_floor"], ".1%"),
                peak("ours"),
                peak("transformers"),
                check_cell(r),
            )
        )
    return markdown_table(head, lines, left=(0, 1, -1))


def row_notes(r: dict[str, Any]) -> list[str]:
    """Detail lines printed under the table."""
    out = []
    if "logits_rel_err" in r:
        out.append(
            f"logits ours vs transformers rel err {r['logits_rel_err']:.2e}, max |diff| "
            f"{r['logits_max_abs_diff']:.3g} (rms logit {r['logits_abs_mean_transformers']:.3g}), argmax "
            f"agreement {r['argmax_agreement']:.1%}, finite {r['logits_finite']}"
        )
    for key in (
        "greedy_ours_vs_transformers",
        "greedy_ours_vs_ours_plain",
        "greedy_ours_plain_vs_transformers",
    ):
        if key in r:
            g = r[key]
            out.append(
                f"{key.removeprefix('greedy_')}: identical {g['identical']}, agreeing prefix min "
                f"{g['min_agreeing_prefix']} / mean {g['mean_agreeing_prefix']:.1f} of {r['new_tokens']}"
            )
    if r.get("kind") in ("decode", "concurrent"):
        for s in ("ours", "ours_plain", "transformers"):
            if s in r:
                d = r[s]
                out.append(
                    f"{s}: {d['ms_per_step']:.2f} ms/step, decode {d['tokens_per_s']:,.1f} tok/s, total "
                    f"{d['total_tokens_per_s']:,.1f} tok/s ({d['total_s']:.2f}s, first tokens {d['first_token_s']:.2f}s), "
                    f"{d['lm_head_calls']} steps, own peak {fmt(d['own_peak_gib'], '.1f')} GiB"
                )
        out.append(
            f"floor: {r['floor_ms_per_step']:.2f} ms/step ({r['floor_step_bytes'] / 1e9:.2f} GB/step), decode ceiling "
            f"{r['floor_tokens_per_s']:,.0f} tok/s, total {r['floor_total_tokens_per_s']:,.0f} tok/s"
        )
    if r.get("kind") in ("ttft", "longest"):
        for s in ("ours", "transformers"):
            if s in r:
                d = r[s]
                out.append(
                    f"{s}: TTFT {d['ttft_s']:.3f}s (runs {', '.join(f'{t:.3f}' for t in d['times_s'])}; "
                    f"{d['lm_head_calls']} steps), peak {fmt(d['peak_gib'], '.1f')} GiB in this process, own peak "
                    f"{fmt(d['own_peak_gib'], '.1f')} GiB"
                )
        if "transformers_skipped" in r:
            out.append(f"transformers skipped: {r['transformers_skipped']}")
    if r.get("kind") == "longest":
        out.append(
            f"plan: longest context {fmt(r.get('planned_longest_context'), ',')} (KV positions that fit "
            f"{fmt(r.get('planned_kv_tokens_that_fit'), ',')}, model limit {r['max_position_embeddings']:,}); "
            f"transformers' pure-PyTorch prefill fits at most about {fmt(r.get('transformers_longest_estimate'), ',')} tokens"
            + (f"; {r['note']}" if r.get("note") else "")
        )
    return out
