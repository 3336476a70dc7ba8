"""Engine metrics: what `LLMEngine.metrics()` reports, and the counters the engine keeps for it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

_RATE_WINDOW_S = 10.0  # generation tokens/s is measured over this trailing window


@dataclass(frozen=True)
class TimeSummary:
    """How many requests a duration was measured for, and its total in seconds (a Prometheus
    summary's `_count` and `_sum`: the mean over any span is the difference of two readings)."""

    count: int = 0
    sum_s: float = 0.0

    def add(self, seconds: float) -> TimeSummary:
        return TimeSummary(self.count + 1, self.sum_s + seconds)

    @property
    def mean_s(self) -> float:
        return self.sum_s / self.count if self.count else 0.0


@dataclass
class EngineMetrics:
    """Counts and rates of one engine at one moment.

    `queue_time`: from a request's arrival (`add_request`'s `arrival_time`) to the first step
    that runs it; `prefill_time`: from there to its first token. Together they are the engine's
    part of the time to first token."""

    waiting: int
    running: int
    kv_blocks_used: int
    kv_blocks_total: int
    state_slots_used: int
    state_slots_total: int
    snapshots: int
    prompt_tokens_total: int
    generation_tokens_total: int
    generation_tokens_per_s: float
    mean_time_to_first_token_s: float
    preemptions_total: int
    steps_ahead_total: int = 0
    """Decode steps launched before the last step's tokens were read (`engine/ahead.py`)."""
    queue_time: TimeSummary = TimeSummary()
    prefill_time: TimeSummary = TimeSummary()


@dataclass
class RequestStats:
    """The engine's counters: tokens, preemptions, time to first token and the generation rate.
    Times are `time.monotonic()` seconds, given by the caller."""

    prompt_tokens: int = 0
    generated: int = 0
    preemptions: int = 0
    queue_time: TimeSummary = TimeSummary()
    prefill_time: TimeSummary = TimeSummary()
    _arrival: dict[str, float] = field(default_factory=dict)
    _first_run: dict[str, float] = field(default_factory=dict)  # until its first token
    _ttft_sum: float = 0.0
    _ttft_count: int = 0
    _recent: list[tuple[float, int]] = field(default_factory=list)  # (step end, tokens sampled)

    def arrived(self, request_id: str, num_prompt_tokens: int, now: float) -> None:
        self._arrival[request_id] = now
        self.prompt_tokens += num_prompt_tokens

    def running(self, request_id: str, now: float) -> None:
        """A request without a token yet is in a step: the first such step ends its queue time
        (a preempted request's later steps change nothing)."""
        if request_id not in self._first_run and request_id in self._arrival:
            self._first_run[request_id] = now
            self.queue_time = self.queue_time.add(now - self._arrival[request_id])

    def generated_token(self, request_id: str, first: bool, now: float) -> None:
        """A request got a token; `first`: its first, which ends its time to first token."""
        if first:
            self._ttft_sum += now - self._arrival.get(request_id, now)
            self._ttft_count += 1
            start = self._first_run.pop(request_id, None)
            if start is not None:
                self.prefill_time = self.prefill_time.add(now - start)
        self.generated += 1

    def left(self, request_id: str) -> None:
        """A request finished or was aborted."""
        self._arrival.pop(request_id, None)
        self._first_run.pop(request_id, None)

    def step_done(self, now: float, num_tokens: int) -> None:
        """A step sampled `num_tokens` tokens; trims the rate window."""
        self._recent.append((now, num_tokens))
        while now - self._recent[0][0] > _RATE_WINDOW_S:
            self._recent.pop(0)

    @property
    def tokens_per_s(self) -> float:
        """Tokens sampled per second over the window that ends now (the tokens of its first step
        excluded: they were made before the window's span began). Steps are read against the
        clock, not trimmed only by the next step: an idle engine decays to 0 within one window."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= _RATE_WINDOW_S]
        span = now - recent[0][0] if recent else 0.0
        return sum(n for _, n in recent[1:]) / span if span > 0 else 0.0

    @property
    def mean_time_to_first_token_s(self) -> float:
        return self._ttft_sum / self._ttft_count if self._ttft_count else 0.0
