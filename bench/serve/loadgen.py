"""The serve bench's load generator: a closed loop of `concurrency` streaming requests, each
finished one replaced by the next, over one of two senders (HTTP through the async `openai`
client, or the in-process `AsyncLLM`), and the per-level statistics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common.stats import nearest_rank

# One request's stream: yields once per arrived chunk that carries tokens, with the number of
# completion tokens it reports at the end (None: count the chunks).
Sender = Callable[[str, int], AsyncIterator[int | None]]


@dataclass
class RequestRecord:
    """Timestamps of one request (seconds, `time.perf_counter`)."""

    start: float
    chunks: list[float] = field(default_factory=list)
    completion_tokens: int | None = None
    error: str | None = None


async def _one(send: Sender, prompt: str, max_tokens: int) -> RequestRecord:
    rec = RequestRecord(start=time.perf_counter())
    try:
        async for final_count in send(prompt, max_tokens):
            if final_count is None:
                rec.chunks.append(time.perf_counter())
            else:
                rec.completion_tokens = final_count
    except Exception as e:  # noqa: BLE001 - a failed request is counted, the load goes on
        rec.error = f"{type(e).__name__}: {str(e)[:200]}"
    if rec.completion_tokens is None:
        rec.completion_tokens = len(rec.chunks)
    return rec


async def closed_loop(
    send: Sender, prompts: list[str], max_tokens: int, concurrency: int
) -> tuple[list[RequestRecord], float]:
    """Run every prompt with at most `concurrency` in flight; (records, wall seconds)."""
    queue = list(reversed(prompts))
    records: list[RequestRecord] = []

    async def worker() -> None:
        while queue:
            records.append(await _one(send, queue.pop(), max_tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    return records, time.perf_counter() - t0


def level_stats(records: list[RequestRecord], wall_s: float, max_tokens: int) -> dict[str, Any]:
    """Requests/s, output tokens/s, TTFT, time per output token (TPOT: a request's time from its
    first to its last token over its tokens after the first), inter-token latency (ITL: the gaps
    between a request's chunks, pooled), and errors (a failed request, or one that did not make
    `max_tokens` tokens: every request asks for exactly that many, eos ignored)."""
    ok = [r for r in records if r.error is None and r.chunks]
    ttft = [(r.chunks[0] - r.start) * 1e3 for r in ok]
    tpot = [
        (r.chunks[-1] - r.chunks[0]) * 1e3 / (r.completion_tokens - 1)
        for r in ok
        if r.completion_tokens and r.completion_tokens > 1
    ]
    itl = [(b - a) * 1e3 for r in ok for a, b in zip(r.chunks, r.chunks[1:])]
    out_tokens = sum(r.completion_tokens or 0 for r in ok)
    short = [r for r in ok if r.completion_tokens != max_tokens]
    errors = [r.error for r in records if r.error is not None]
    errors += [f"made {r.completion_tokens} of {max_tokens} tokens" for r in short]
    errors += ["no tokens" for r in records if r.error is None and not r.chunks]

    def pct(xs: list[float], q: float) -> float | None:
        return nearest_rank(xs, q) if xs else None

    return {
        "requests": len(records),
        "wall_s": wall_s,
        "requests_per_s": len(records) / wall_s if wall_s > 0 else None,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / wall_s if wall_s > 0 else None,
        "ttft_ms": {
            "p50": pct(ttft, 0.5),
            "p99": pct(ttft, 0.99),
            "mean": sum(ttft) / len(ttft) if ttft else None,
        },
        "tpot_ms": {"p50": pct(tpot, 0.5), "p99": pct(tpot, 0.99)},
        "itl_ms": {"p50": pct(itl, 0.5), "p99": pct(itl, 0.99)},
        "errors": len(errors),
        "error_examples": errors[:5],
    }
