"""`bench.runtime.gpu`'s structured rows run as their CPU logic check (`--device cpu --quick
--rows structured`), so the GPU run cannot rot: each row prices a constrained step against an
unconstrained one, part by part."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_structured_rows_cpu_logic_check(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "bench.runtime.gpu", "--device", "cpu", "--quick", "--rows", "structured"]
    subprocess.run([*cmd, "--skip-transformers", "--out", str(out)], cwd=REPO, check=True, timeout=600)
    rows = {r["batch"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {1, 32}
    for r in rows.values():
        assert r["ours"]["tokens_per_s"] > 0 and r["unconstrained_tokens_per_s"] > 0 and r["ratio"] > 0
        for part in ("step_us", "sample_us"):
            for side in ("constrained", "unconstrained"):
                t = r[part][side]
                assert t["p50"] > 0 and t["p99"] >= t["p50"] and t["steps"] > 0
                assert math.isclose(t["total"], t["mean"] * t["steps"], rel_tol=1e-9)
        # Sampling is a part of its step, on each side.
        assert all(
            r["sample_us"][s]["p50"] < r["step_us"][s]["p99"] for s in ("constrained", "unconstrained")
        )
        assert r["mask_us"]["steps"] > 0 and r["budget_us"]["p50"] > 0
