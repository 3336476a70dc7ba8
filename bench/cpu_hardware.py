"""The CPU benches' view of the machine: its model name, other processes competing for its cores,
its measured matmul rate and memory bandwidth, and the floors (compute for prefill, bytes read for
decode) that the runtime's rows are compared against."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jamba_runtime.config import JambaConfig


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


# ---- model accounting ----------------------------------------------------------------------------
def param_counts(model: torch.nn.Module, config: JambaConfig) -> dict[str, int]:
    """Total parameters, one expert's, the embedding's, and the matmul parameters a token uses."""
    total = sum(p.numel() for p in model.parameters())
    embed = config.vocab_size * config.hidden_size
    expert = 3 * config.hidden_size * config.intermediate_size
    n_moe = len(config.moe_layers)
    all_experts = n_moe * config.num_experts * expert
    # Matmul weights only: no norms, A_log, D, conv taps or biases (elementwise work, not FLOPs that
    # the matmul rate bounds); the embedding is a gather.
    small = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "conv1d" in name or name.endswith("A_log"):
            small += p.numel()
    if config.tie_word_embeddings:
        dense_matmul = total - small - all_experts
    else:
        dense_matmul = total - small - all_experts - embed
    return {
        "total": total,
        "embedding": embed,
        "per_expert": expert,
        "moe_layers": n_moe,
        "dense_matmul": dense_matmul,
        "active_matmul_per_token": dense_matmul + n_moe * config.num_experts_per_tok * expert,
    }


def prefill_bound(
    config: JambaConfig, counts: dict[str, int], prompt_len: int, hw: dict[str, float]
) -> float:
    attn = (
        len(config.attention_layers)
        * 2
        * 2
        * config.num_attention_heads
        * config.head_dim
        * (prompt_len + 1)
        / 2
    )
    flops_per_token = 2 * counts["active_matmul_per_token"] + attn
    return hw["matmul_gflops"] * 1e9 / flops_per_token


def decode_bound(
    config: JambaConfig, counts: dict[str, int], batch: int, context: int, hw: dict[str, float]
) -> float:
    e, k = config.num_experts, config.num_experts_per_tok
    # Distinct experts a step reads when `batch` tokens route independently and uniformly.
    distinct = e * (1 - (1 - k / e) ** batch)
    # Every weight is read once a step except the embedding (one row per token; it is the LM head
    # too when tied) and the experts no token routed to.
    weights = counts["total"] - counts["moe_layers"] * (e - distinct) * counts["per_expert"]
    if not config.tie_word_embeddings:
        weights -= counts["embedding"]
    kv = len(config.attention_layers) * 2 * config.num_key_value_heads * config.head_dim * context * batch
    # Mamba state is read and written every step.
    state = (
        2
        * len(config.mamba_layers)
        * config.mamba_d_inner
        * (config.mamba_d_state + config.mamba_d_conv - 1)
        * batch
    )
    step_bytes = 4 * (weights + kv + state)
    return batch * hw["read_bandwidth_gb_s"] * 1e9 / step_bytes


# ---- the two sides -------------------------------------------------------------------------------
