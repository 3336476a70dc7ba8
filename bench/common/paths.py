"""Where the benches read and write: the repository root, `bench/results/` (git-ignored) and the
output folder of a device run (`$OUT` when set)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
# The project's shared data sits beside the repository (`../shared/data`); a device run, which
# carries only the repository, points JAMBA_BENCH_DATA at a carried copy.
SHARED_DATA = Path(os.environ.get("JAMBA_BENCH_DATA") or REPO.parent / "shared" / "data")


def out_dir() -> Path:
    """`$OUT` when it is set (a device run brings back what is written there), else `bench/results/`;
    created if missing."""
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    return out
