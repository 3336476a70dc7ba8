"""The serve bench's CPU logic check (`python -m bench.serve.gpu --device cpu`), so that the GPU
bench cannot rot between device runs: a real `jamba-stack serve` subprocess on the tiny model,
driven through the async `openai` client, then the same engine in-process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.serve.gpu import main


@pytest.mark.slow
def test_serve_bench_cpu_logic_check(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    argv = ["--device", "cpu", "--quick", "--levels", "1,2", "--min-requests", "2", "--offline", "fixed:2"]
    argv += ["--temperature", "1"]  # the API's default sampling, through both sides
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["failed"] is None
    assert result["settings"]["temperature"] == 1.0
    rows = {(r["side"], r["workload"], r["concurrency"]): r for r in result["rows"]}
    expected = {("http", w, c) for w in ("fixed", "mixed") for c in (1, 2)} | {("offline", "fixed", 2)}
    assert set(rows) == expected
    for r in rows.values():
        assert r["errors"] == 0, r["error_examples"]
        assert isinstance(r["triton_kernels_compiled"], int) and r["triton_kernels_compiled"] >= 0
        assert r["requests"] == max(2, 2 * r["concurrency"])
        assert r["output_tokens"] == r["requests"] * 8  # --quick on CPU: 8 new tokens, eos ignored
        for key in ("ttft_ms", "tpot_ms"):
            assert r[key]["p50"] > 0 and math.isfinite(r[key]["p99"])
        assert r["output_tokens_per_s"] > 0
        # Where the mean TTFT went: the server's parts over HTTP, the engine's alone offline.
        split = r["ttft_split_ms"]
        assert split["ttft"] == r["ttft_ms"]["mean"] > 0
        assert split["queue"] >= 0 and split["prefill"] > 0
        assert (split["prepare"] is not None and split["prepare"] > 0) == (r["side"] == "http")
        parts = split["queue"] + split["prefill"] + (split["prepare"] or 0)
        assert math.isclose(split["rest"], split["ttft"] - parts) and parts <= split["ttft"]
    # the fixed workload's prompts are cut to 64 tokens; the mixed ones lie in [16, 128]
    assert rows[("http", "fixed", 1)]["prompt_tokens_mean"] <= 64
    assert 16 <= rows[("http", "mixed", 2)]["prompt_tokens_mean"] <= 128
    assert "| fixed    |    2 |" in result["table"]
