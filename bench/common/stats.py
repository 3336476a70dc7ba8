"""Percentiles of timing samples, in the two conventions the benches report."""

from __future__ import annotations

import numpy as np


def percentile(xs: list[float], p: float) -> float:
    """The `p`-th percentile (0-100) of `xs`, linearly interpolated (numpy's default); nan for none."""
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def nearest_rank(xs: list[float], q: float) -> float:
    """The sample at rank `q` (0-1) of the sorted `xs`, no interpolation (p99 is a measured value);
    nan for none."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]
