"""`/metrics` in Prometheus' text format: HTTP requests, request latency, time to first token and
the preparation before the engine has a request (measured here), and the engine's queue, tokens,
cache use, queue time and prefill time (read from `AsyncLLM.metrics()` at each scrape, which
never blocks). A request's time to first token is its preparation, then the engine's queue time
and prefill time, then the way back to the client.

Each app has its own registry, so several apps (tests) can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from jamba_runtime.async_llm import AsyncLLM

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _EngineCollector(Collector):
    def __init__(self, llm: AsyncLLM) -> None:
        self._llm = llm

    def collect(self) -> Iterator[Metric]:
        m = self._llm.metrics()
        gauges = {
            "jamba_requests_running": ("Sequences running in the engine.", m.running),
            "jamba_requests_waiting": ("Sequences queued, not yet running.", m.waiting),
            "jamba_kv_blocks_used": ("KV cache blocks in use (sequences and snapshots).", m.kv_blocks_used),
            "jamba_kv_blocks_total": ("KV cache blocks in the pool.", m.kv_blocks_total),
            "jamba_state_slots_used": (
                "Mamba state slots in use (sequences and snapshots).",
                m.state_slots_used,
            ),
            "jamba_state_slots_total": ("Mamba state slots in the pool.", m.state_slots_total),
            "jamba_prefix_snapshots": ("Prefix snapshots kept.", m.snapshots),
            "jamba_kv_cache_usage_ratio": (
                "Fraction of KV cache blocks in use.",
                m.kv_blocks_used / m.kv_blocks_total if m.kv_blocks_total else 0.0,
            ),
            "jamba_generation_tokens_per_second": (
                "Generated tokens per second over the last 10 s.",
                m.generation_tokens_per_s,
            ),
            "jamba_mean_time_to_first_token_seconds": (
                "Mean time from arrival to first token, over all requests so far.",
                m.mean_time_to_first_token_s,
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        counters = {
            "jamba_prompt_tokens": ("Prompt tokens of all requests added.", m.prompt_tokens_total),
            "jamba_generation_tokens": ("Tokens generated.", m.generation_tokens_total),
            "jamba_preemptions": (
                "Sequences preempted (recomputed later) for lack of cache.",
                m.preemptions_total,
            ),
            "jamba_steps_ahead": (
                "Decode steps launched before the last step's tokens were read (asynchronous scheduling).",
                m.steps_ahead_total,
            ),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        summaries = {
            "jamba_request_queue_time_seconds": (
                "Time from a request reaching the engine to its first step.",
                m.queue_time,
            ),
            "jamba_request_prefill_time_seconds": (
                "Time from a request's first step to its first token.",
                m.prefill_time,
            ),
        }
        for name, (doc, summary) in summaries.items():
            yield SummaryMetricFamily(name, doc, count_value=summary.count, sum_value=summary.sum_s)


class ServerMetrics:
    """The server's Prometheus metrics; `render()` is the `/metrics` body."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "jamba_http_requests", "HTTP requests by route and status.", ["path", "status"], registry=r
        )
        self.finished = Counter(
            "jamba_request_finished",
            "Generation sequences finished, by finish reason.",
            ["finish_reason"],
            registry=r,
        )
        self.latency = Histogram(
            "jamba_request_latency_seconds",
            "Time from a generation request's arrival to its last token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "jamba_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first token.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.prepare = Histogram(
            "jamba_request_prepare_seconds",
            "Time from a generation request's arrival to the engine having it (checks, chat "
            "template, tokenizing).",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "jamba_http_requests_in_flight", "Generation requests the server is answering now.", registry=r
        )
        r.register(_EngineCollector(llm))

    def render(self) -> bytes:
        return generate_latest(self.registry)
