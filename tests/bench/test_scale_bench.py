"""The scale bench on CPU, so that it cannot rot between device runs: its shapes, the memory plan
of Jamba-1.5-Large over 8 GPUs (computed, nothing allocated), and a logic check of the whole bench
on `tiny-large` (Large's layer pattern at tiny widths) over 2 gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common.gpu_models import MINI_CONFIG
from bench.common.paths import REPO
from bench.scale.gpu import main
from bench.scale.plan import GIB, scale_plan
from bench.scale.shapes import LARGE_CONFIG, LARGE_PATTERN_KEYS, MODELS_DIRS, resolve_shape
from jamba_runtime.config import JambaConfig
from jamba_runtime.tiny import TINY_CONFIG

SHARED_LARGE = next((d / "jamba-1.5-large" for d in MODELS_DIRS if (d / "jamba-1.5-large").is_dir()), None)


@pytest.fixture(scope="module")
def large() -> JambaConfig:
    return JambaConfig.from_dict(resolve_shape("large"), source="large")


def test_large_is_the_published_shape(large: JambaConfig) -> None:
    assert large.num_hidden_layers == 72
    assert len(large.attention_layers) == 9 and len(large.moe_layers) == 36
    assert large.num_experts == 16 and large.num_experts_per_tok == 2
    h, i, e = large.hidden_size, large.intermediate_size, large.num_experts
    experts = len(large.moe_layers) * e * 3 * h * i
    assert 347e9 < experts < 348e9  # of the 398.6 B parameters (shared/models/README.md)


@pytest.mark.skipif(SHARED_LARGE is None, reason="shared model configs not beside or inside the repo")
def test_built_in_large_equals_the_shared_config() -> None:
    assert SHARED_LARGE is not None
    assert LARGE_CONFIG == json.loads((SHARED_LARGE / "config.json").read_text())
    assert resolve_shape("jamba-1.5-large") == LARGE_CONFIG


def test_old_names_and_tiny_large() -> None:
    assert resolve_shape("mini") == MINI_CONFIG
    assert {k: v for k, v in resolve_shape("tiny").items() if k in TINY_CONFIG} == TINY_CONFIG
    tiny_large = JambaConfig.from_dict(resolve_shape("tiny-large"), source="tiny-large")
    assert all(getattr(tiny_large, k) == LARGE_CONFIG[k] for k in LARGE_PATTERN_KEYS)
    assert tiny_large.attention_layers == [4, 12] and tiny_large.moe_layers == list(range(1, 16, 2))


def test_a_shared_folder_or_any_config_is_a_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    (models / "jamba-1.5-small").mkdir(parents=True)
    raw = {**TINY_CONFIG, "num_hidden_layers": 4}
    (models / "jamba-1.5-small" / "config.json").write_text(json.dumps(raw))
    monkeypatch.setattr("bench.scale.shapes.MODELS_DIRS", (models,))
    assert resolve_shape("jamba-1.5-small") == resolve_shape("small") == raw
    monkeypatch.setenv("OUT", str(tmp_path))
    assert main(["--shape", "small", "--plan-only"]) == 0
    assert "(1 attention layers)" in capsys.readouterr().out  # the folder's 4 layers (built-in tiny: 2)
    assert json.loads((tmp_path / "scale_plan.json").read_text())["gpus"] == 1
    assert (
        main(["--config", str(models / "jamba-1.5-small" / "config.json"), "--tp", "2", "--plan-only"]) == 0
    )
    assert "tensor parallel 2" in capsys.readouterr().out


def test_large_int8_plan_over_8_gpus_holds_256k(large: JambaConfig) -> None:
    plan = scale_plan(large, 8, "experts_int8", device_memory_bytes=80 * GIB)
    p = plan.plan
    h, i = large.hidden_size, large.intermediate_size
    # 2 of 16 experts per MoE layer on each rank: int8 weights + float32 scale per output row.
    assert p.expert_weights_bytes == 36 * 2 * (3 * h * i + (2 * i + h) * 4)
    assert 53.5 * GIB < p.weights_bytes < 54.5 * GIB
    assert p.kv_bytes_per_token == 9 * 2 * 1 * 128 * 2  # one of the 8 KV heads per rank, bf16
    assert plan.kv_bytes_per_token_all_gpus == 36_864  # shared/models/README.md: Large's KV per token
    assert plan.mamba_bytes_per_sequence == 63 * (16_384 // 8) * (3 * 2 + 16 * 4)
    assert plan.target_context == 262_144 and plan.fits_target
    assert plan.headroom_bytes is not None and plan.headroom_bytes > 4 * GIB
    assert plan.target_sequences is not None and plan.target_sequences >= 2
    assert not scale_plan(large, 4, "experts_int8", device_memory_bytes=80 * GIB).fits_target
    assert not scale_plan(large, 8, None, device_memory_bytes=80 * GIB).fits_target  # bf16: ~100 GiB


def test_plan_only_prints_and_writes_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert main(["--shape", "large", "--tp", "8", "--plan-only", "--tag", "_t"]) == 0
    printed = capsys.readouterr().out
    assert "262,144-token sequence: fits" in printed and "tensor parallel 8" in printed
    plan = json.loads((tmp_path / "scale_plan_t.json").read_text())
    assert plan["fits_target"] and plan["gpus"] == plan["expert_parallel_size"] == 8
    assert plan["kv_tokens_that_fit"] > 262_144


def test_a_bad_shape_or_gpu_count_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--shape", "huge", "--plan-only"]) == 2
    assert "--shape 'huge' is unknown" in capsys.readouterr().err
    assert main(["--shape", "large", "--tp", "3", "--plan-only"]) == 2
    assert "tensor_parallel_size=3" in capsys.readouterr().err


@pytest.mark.slow
def test_scale_bench_cpu_logic_check_tiny_large_on_two_ranks(tmp_path: Path) -> None:
    # A subprocess: the bench leaves its process group to the exit (os._exit) when --tp > 1.
    argv = ["--shape", "tiny-large", "--device", "cpu", "--tp", "2", "--weights", "int8", "--skip-quality",
            "--concurrent", "4", "--prompt-len", "64", "--new-tokens", "8", "--chunk", "256", "--ttft", "128",
            "--longest", "0", "--decode-prompt-len", "64", "--decode-tokens", "8", "--gpu-memory-gib", "1"]  # fmt: skip
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale.gpu", *argv], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "memory plan per GPU" in done.stdout and "over 2 GPUs" in done.stdout
    report = json.loads((tmp_path / "scale_gpu.json").read_text())
    res = report["tiny-large_int8_tp2"]
    assert "error" not in res, res
    assert res["layers"] == 16 and res["tp"] == 2
    # the plan printed before loading counts the bytes rank 0 then holds
    assert res["weights_gib_per_gpu"] == report["plan"]["weights_gib_per_gpu"]
    rows = res["rows"]
    assert set(rows) == {"decode_b1", "concurrent", "ttft_128"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["decode_b1"]["batch"] == 1 and rows["concurrent"]["batch"] == 4
    assert rows["concurrent"]["total_tokens_per_s"] > 0 and rows["ttft_128"]["ttft_s"] > 0
