"""Fixtures for the web-app tests: settings pointed at a temporary data dir and the tiny model, and
`chroma run` on loopback."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_procs import BIN, Proc, clean_env, free_port, start_process


@pytest.fixture
def ui_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The app's settings for an AppTest: a fresh data dir, the tiny model in-process, the float32
    embedder (no ONNX export), a 64 KB upload limit. Returns the data dir."""
    for key in list(os.environ):
        if key.startswith("JAMBA_STACK_"):
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("JAMBA_STACK_DATA_DIR", str(data))
    monkeypatch.setenv("JAMBA_STACK_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("JAMBA_STACK_EMBEDDER", "minilm-fp32")
    monkeypatch.setenv("JAMBA_STACK_MAX_UPLOAD_MB", "0.0625")
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    return data


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """`chroma run` on a free loopback port with a fresh path."""
    work = tmp_path_factory.mktemp("chroma")
    port = free_port()
    args = [
        str(BIN / "chroma"),
        "run",
        "--path",
        str(work / "db"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    p = start_process(
        "chroma", args, f"http://127.0.0.1:{port}", "/api/v2/heartbeat", work / "chroma.log", clean_env()
    )
    yield p
    p.stop(signal.SIGTERM)
