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


def _up(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "jamba-stack")
    return subprocess.run(
        [exe, "up", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=tmp_path,
    )


@pytest.fixture
def other_server(tmp_path: Path):  # noqa: ANN201 - (port, process)
    """Another HTTP server on a loopback port; its /health answers 200 (a file of that name)."""
    (tmp_path / "health").write_text("ok")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    yield port, proc
    proc.terminate()
    proc.wait(timeout=10)


def test_up_refuses_a_port_another_server_holds_before_starting_anything(
    tmp_path: Path, other_server: tuple[int, subprocess.Popen]
) -> None:
    port, proc = other_server
    out = _up(tmp_path, "--port", str(port), "--ui-port", str(free_port()))
    assert out.returncode == 2, out.stderr
    assert (
        f"error: port {port} on 127.0.0.1 is in use by pid {proc.pid}" in out.stderr
        and "--port" in out.stderr
    )
    assert "Ctrl-C stops both" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "logs").exists()  # nothing was started
    same = _up(tmp_path, "--port", "18123", "--ui-port", "18123")
    assert same.returncode == 2 and "choose different ones" in same.stderr


def test_a_health_answer_from_another_process_is_not_taken_for_the_child(
    tmp_path: Path, other_server: tuple[int, subprocess.Popen]
) -> None:
    from jamba_stack.app.cli.up import Service, StackStartError, wait_healthy

    port, proc = other_server
    # Our "server" never binds the port (it only sleeps): whatever answers there is someone else.
    child = Service("API server", ["sleep", "60"], f"http://127.0.0.1:{port}/health", tmp_path / "s.log", {})
    child.start()
    try:
        with pytest.raises(StackStartError) as err:
            wait_healthy(child, 30)
    finally:
        child.stop(grace_s=1)
    assert f"another process (pid {proc.pid}) answers on port {port}" in str(err.value)


def test_a_failed_start_shows_this_runs_log_lines_only(tmp_path: Path) -> None:
    logs = tmp_path / "data" / "logs"
    logs.mkdir(parents=True)
    (logs / "server.log").write_text("a line of an earlier run\n" * 50)
    out = _up(tmp_path, "--model", str(tmp_path / "no-such-model"), "--port", str(free_port()))
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "API server exited with status 2" in text and "no-such-model" in text, text
    assert "an earlier run" not in text and "Ctrl-C stops both" not in text
