"""`jamba-stack serve` as a user runs it: a subprocess on a free loopback port, ready when
`/health` answers, stopped (SIGINT, then SIGKILL) at teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

EXE = str(Path(sys.executable).parent / "jamba-stack")
API_KEY = "test-key"


@dataclass
class ServerProcess:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    log: Path
    api_key: str = API_KEY

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, workdir: Path, extra: list[str], env: dict[str, str]) -> ServerProcess:
    for attempt in range(3):  # the free port may be taken between the check and the bind
        port = _free_port()
        log = workdir / f"server-{port}.log"
        args = [EXE, "serve", "--model", str(model), "--port", str(port), "--data-dir", str(workdir), *extra]
        with log.open("wb") as out:  # a file, not a pipe: an unread pipe would block the server
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        _stop(server)
        if attempt == 2 or "address already in use" not in server.log_text():
            pytest.fail(f"jamba-stack serve did not become ready:\n{server.log_text()[-4000:]}")
    raise AssertionError("unreachable")


def _stop(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Start `jamba-stack serve --model MODEL [extra args]` with `JAMBA_STACK_API_KEY=test-key`;
    every server started is stopped when the module ends."""
    started: list[ServerProcess] = []

    def start(model: Path, *extra: str) -> ServerProcess:
        workdir = tmp_path_factory.mktemp("serve")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_STACK_")}
        # One thread: the tiny model's matmuls are too small to split (as in the test process).
        env.update(JAMBA_STACK_API_KEY=API_KEY, OMP_NUM_THREADS="1")
        server = _start(model, workdir, list(extra), env)
        started.append(server)
        return server

    yield start
    for server in started:
        _stop(server)
