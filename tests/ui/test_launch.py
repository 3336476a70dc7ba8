"""`up_cmd` (`jamba-stack up`): both services come up on loopback, the web app is pointed at the
server, an API server that dies is restarted with a line saying why, and SIGTERM stops both
cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ui_procs import clean_env, free_port

pytest.importorskip("streamlit", reason="`up` starts streamlit (pip install -e '.[ui]')")

UP = "import typer; from jamba_stack.app.cli.up import up_cmd; typer.run(up_cmd)"


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.5)
    assert text in log.read_text(), log.read_text()


def test_up_starts_server_and_app_restarts_a_dead_server_and_sigterm_stops_both(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    api, ui = free_port(), free_port()
    args = [sys.executable, "-c", UP, "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "data")]
    args += ["--port", str(api), "--ui-port", str(ui)]
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=tmp_path)
    try:
        _wait_for(log, "Ctrl-C stops both.", proc, 240)
        assert httpx.get(f"http://127.0.0.1:{api}/health", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ui}/_stcore/health", timeout=5).status_code == 200
        match = re.search(r"API server: \S+  \(pid (\d+),", log.read_text())
        assert match, log.read_text()
        os.kill(int(match.group(1)), signal.SIGKILL)  # as the OOM killer would
        _wait_for(log, "the API server is back", proc, 120)
        assert "the API server was killed by SIGKILL: restarting it (1/3)" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{api}/health", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    for port in (api, ui):  # both children are gone: nothing answers
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            raise AssertionError(f"port {port} still answers after up stopped")
        except httpx.TransportError:
            pass
    text = log.read_text()
    assert f"Web app:    http://127.0.0.1:{ui}" in text and "SIGTERM: stopping..." in text
