"""The CPU benches' view of the machine: its model name, other processes competing for its cores,
and its measured matmul rate and memory bandwidth."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Contention:
    """How much of the machine other processes used over an interval, from /proc/stat.

    The bench machine may be shared; PyTorch's OpenMP threads spin-wait for each other, so a run
    whose threads compete with other busy processes can slow down several-fold. Each row records
    the share of all cores other processes used while it was measured.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields_ = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(fields_) - fields_[3] - (fields_[4] if len(fields_) > 4 else 0)  # minus idle, iowait
        own = os.times()
        return time.perf_counter(), busy / tick, own.user + own.system

    def others_share(self) -> float | None:
        """Core-seconds used by other processes / (wall seconds * cores), since construction."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_hardware(quick: bool) -> dict[str, float]:
    """fp32 matmul rate (GFLOP/s) and read bandwidth (GB/s) at the current thread count."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_time(lambda: torch.mm(a, b), 3 if quick else 5)
    gflops = 2 * n**3 / t / 1e9
    # 512 MiB, well past any cache; a sum reads every byte once.
    x = torch.ones((128 if quick else 512) * 2**20 // 4)
    t = median_time(lambda: x.sum(), 3 if quick else 5)
    gbs = x.numel() * 4 / t / 1e9
    return {
        "matmul_gflops": gflops,
        "read_bandwidth_gb_s": gbs,
        "matmul_n": n,
        "bandwidth_bytes": x.numel() * 4,
    }
