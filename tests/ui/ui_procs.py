"""Helpers of the web-app tests: start a service as a plain process on a free loopback port and
wait for its health check (as docker-compose.yml wires the services), stop it."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(
    name: str,
    args: list[str],
    url: str,
    health_path: str,
    log: Path,
    env: dict[str, str],
    timeout: float = 120,
    cwd: Path | None = None,
) -> Proc:
    """Start `args`, wait until `url + health_path` answers 200; fail with the log otherwise."""
    with log.open("wb") as out:  # a file, not a pipe: an unread pipe would block the child
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd or log.parent)
    p = Proc(name, url, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + health_path, timeout=2).status_code == 200:
                return p
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    p.stop()
    pytest.fail(f"{name} did not become ready at {url + health_path}:\n{p.log_text()[-4000:]}")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without JAMBA_STACK_* settings, plus `extra`; one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_STACK_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


def websocket_status(port: int, host: str, origin: str) -> str:
    """The status line Streamlit answers a websocket upgrade of its app stream with."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request.encode())
        return sock.recv(256).decode(errors="replace").split("\r\n")[0]
