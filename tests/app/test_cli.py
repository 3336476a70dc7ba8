"""The `jamba-stack` console script, run as a user runs it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "jamba-stack")


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True, timeout=300, env=env)


def test_make_tiny_then_generate(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    made = run("model", "make-tiny", str(model))
    assert made.returncode == 0, made.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in model.iterdir()
    }
    again = run("model", "make-tiny", str(model))
    assert again.returncode == 2 and "--force" in again.stderr
    (tmp_path / "a-file").write_text("x")
    onto_file = run("model", "make-tiny", str(tmp_path / "a-file"))
    assert (
        onto_file.returncode == 2 and "is a file" in onto_file.stderr and "Traceback" not in onto_file.stderr
    )

    first = run("generate", "--model", str(model), "Hello there", "--max-tokens", "12", "--temperature", "0")
    second = run("generate", "--model", str(model), "Hello there", "--max-tokens", "12", "--temperature", "0")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() and first.stdout == second.stdout


def test_chat_reads_turns_until_exit(tiny_model_dir: Path) -> None:
    out = run(
        "chat",
        "--model",
        str(tiny_model_dir),
        "--max-tokens",
        "6",
        "--seed",
        "1",
        stdin="hello\n/reset\nagain\n/exit\n",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("jamba> ") == 2


def test_demo_makes_the_tiny_model_in_the_data_dir(tmp_path: Path) -> None:
    out = run("demo", "--data-dir", str(tmp_path), "--max-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "models" / "tiny" / "model.safetensors").is_file()
    assert "random weights" in out.stderr
    assert "chat reply" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", "--model", "/definitely/not/here", "hi"), "does not exist"),
        (("generate", "--temperature", "-1", "hi"), "temperature=-1.0 is invalid"),
        (("generate", "--dtype", "int4", "hi"), "--dtype='int4' is not supported"),
        (("serve", "--kv-cache-dtype", "int4", "--port", "0"), "kv_cache_dtype 'int4' is not supported"),
        (
            ("serve", "--mamba-ssm-dtype", "float16", "--port", "0"),
            "mamba_ssm_dtype 'float16' is not supported",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    args: tuple[str, ...], message: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    if "--model" not in args:
        args = (*args, "--model", str(tiny_model_dir))
    out = run(*args, "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
