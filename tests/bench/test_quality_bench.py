"""The bf16-against-float32 bench's CPU logic check (`python -m bench.runtime.gpu_quality --device
cpu`): ours and transformers' `JambaForCausalLM` on the same tiny weights, each in bf16 and float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.runtime.gpu_quality import main


def test_quality_bench_cpu_logic_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert main(["--device", "cpu", "--quick"]) == 0
    result = json.loads((tmp_path / "runtime_gpu_quality.json").read_text())
    rows = {(r["run"], r["reference"]): r for r in result["rows"]}
    assert set(rows) == {
        (run, ref)
        for run in ("ours bf16", "transformers bf16", "ours float32")
        for ref in ("transformers float32", "ours float32")
        if run != ref
    }
    # The two float32 runs of the same weights agree to float32 rounding; bf16 is visibly coarser
    # on both sides, and every logit is finite.
    assert rows[("ours float32", "transformers float32")]["rel_err"] < 1e-4
    for side in ("ours bf16", "transformers bf16"):
        r = rows[(side, "transformers float32")]
        assert r["finite"] and 1e-4 < r["rel_err"] < 0.1 and r["argmax_agreement"] > 0.8
