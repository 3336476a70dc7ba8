"""The sampler bench's CPU logic check (`python -m bench.runtime.sampler --device cpu`, small
shapes), so that its GPU run cannot rot between device runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.runtime import sampler


def test_sampler_bench_cpu_logic_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sampler.json"
    argv = ["sampler", "--device", "cpu", "--batches", "2,9", "--vocab", "512", "--repeats", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    sampler.main()
    result = json.loads(out.read_text())
    rows = {(r["batch"], r["mix"]): r for r in result["rows"]}
    assert set(rows) == {(b, m) for b in (2, 9) for m in sampler.MIXES}
    assert all(r["ms"] > 0 and r["argmax_ms"] > 0 and r["ops"] > 0 for r in rows.values())
    # No mix adds ops with the batch: seeded rows' numbers reach the device in one copy.
    for mix in ("temp1", "greedy", "topk_topp"):
        assert rows[(2, mix)]["ops"] == rows[(9, mix)]["ops"], mix
    assert result["engine"] == []  # --engine not asked
