"""Where a level's mean time to first token went, for `bench.serve.gpu`: preparation (the
server's checks and tokenizing, until the engine has the request), the engine's queue time (to
the request's first step), its prefill time (to its first token), and the rest (the way back to
the client). Read as cumulative (count, seconds) before and after a level: from the server's
`/metrics`, or from an in-process engine's `metrics()` (no preparation there)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common.tables import markdown_table

Parts = Callable[[], Awaitable[dict[str, tuple[int, float]]]]
"""Cumulative (count, seconds) of each part of the time to first token, read now."""
PARTS = ("prepare", "queue", "prefill")
_METRICS = {
    "prepare": "jamba_request_prepare_seconds",
    "queue": "jamba_request_queue_time_seconds",
    "prefill": "jamba_request_prefill_time_seconds",
}


def server_parts(url: str) -> Parts:
    """The parts from the server's `/metrics`."""
    import httpx

    async def read() -> dict[str, tuple[int, float]]:
        async with httpx.AsyncClient(timeout=30) as client:
            text = (await client.get(f"{url}/metrics")).text
        values = dict(re.findall(r"^(\S+) (\S+)$", text, re.M))
        return {
            part: (int(float(values.get(f"{name}_count", 0))), float(values.get(f"{name}_sum", 0)))
            for part, name in _METRICS.items()
        }

    return read


def engine_parts(llm: Any) -> Parts:
    """The parts from an in-process engine's `metrics()` (no server: nothing to prepare)."""

    async def read() -> dict[str, tuple[int, float]]:
        m = llm.metrics()
        return {
            "queue": (m.queue_time.count, m.queue_time.sum_s),
            "prefill": (m.prefill_time.count, m.prefill_time.sum_s),
        }

    return read


def ttft_split(
    ttft_mean_ms: float | None, before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]
) -> dict[str, float | None]:
    """The level's mean TTFT and the mean of each part over the requests measured in the level;
    `rest`: what the parts leave of the TTFT (the way back to the client, and the client)."""
    out: dict[str, float | None] = {"ttft": ttft_mean_ms}
    for part in PARTS:
        if part not in after:
            out[part] = None
            continue
        count = after[part][0] - before[part][0]
        out[part] = 1e3 * (after[part][1] - before[part][1]) / count if count else None
    known = [out[p] for p in PARTS if out[p] is not None]
    out["rest"] = ttft_mean_ms - sum(known) if ttft_mean_ms is not None and known else None  # type: ignore[operator]
    return out


def split_table(rows: list[dict[str, Any]]) -> str:
    """Where each level's mean TTFT went, both sides (ms)."""

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    lines = [
        (
            r["side"],
            r["workload"],
            str(r["concurrency"]),
            *(f(r["ttft_split_ms"].get(k)) for k in ("ttft", *PARTS, "rest")),
        )
        for r in rows
        if "ttft_split_ms" in r
    ]
    head = ("side", "workload", "conc", "TTFT mean", "prepare", "engine queue", "prefill", "rest")
    return markdown_table(head, lines, left=(0, 1))
