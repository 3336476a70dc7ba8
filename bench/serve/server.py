"""`jamba-stack serve` as `bench.serve.gpu` runs it: a subprocess on a free loopback port with
`--load-format dummy`, and a sender that streams `/v1/completions` to it through the async
`openai` client."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common.paths import REPO
from bench.serve.loadgen import Sender

API_KEY = "bench-key"
MODEL_NAME = "jamba-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_path(workdir: Path) -> str:
    """PYTHONPATH for the server: the repository (for `jamba_runtime`), and, where the project is
    not installed (the GPU machine runs a bare checkout), a folder whose `jamba_stack` package
    points at the repository's `app`, `chat`, `retrieval`, `agents` and `ui` (the layout
    pyproject.toml installs)."""
    import importlib.util

    paths = [str(REPO)]
    if importlib.util.find_spec("jamba_stack") is None:
        shim = workdir / "namespace" / "jamba_stack"
        shim.mkdir(parents=True, exist_ok=True)
        for name in ("app", "chat", "retrieval", "agents", "ui"):
            link = shim / name
            if not link.exists():
                link.symlink_to(REPO / name, target_is_directory=True)
        paths.insert(0, str(shim.parent))
    return os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])


class Server:
    """`jamba-stack serve` in a subprocess; its output goes to a log file."""

    def __init__(self, args: argparse.Namespace, model: Path, workdir: Path, max_model_len: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_STACK_")}
        env.update(JAMBA_STACK_API_KEY=API_KEY, PYTHONPATH=_python_path(workdir), PYTHONUNBUFFERED="1")
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        cmd = [
            sys.executable, "-m", "jamba_stack.app.cli", "serve", "--model", str(model), "--load-format", "dummy",
            "--device", args.device, "--dtype", "float32" if args.device == "cpu" else "bfloat16",
            "--port", str(self.port), "--data-dir", str(workdir), "--served-model-name", MODEL_NAME,
            "--max-num-seqs", str(max(args.levels)), "--max-model-len", str(max_model_len),
            "--cache-memory-gb", str(args.cache_memory_gb), "--log-level", "warning",
        ]  # fmt: skip
        self.started = time.perf_counter()
        with self.log.open("wb") as out:  # a file, not a pipe: an unread pipe would block the server
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the start until `/health` answers 200; raises with the log's tail if the
        process ends or the time runs out first."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not answer /health in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def http_sender(url: str, temperature: float = 0.0) -> tuple[Sender, Any]:
    """A sender streaming `/v1/completions` through the async `openai` client at `temperature`,
    and the client."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=1800)

    async def send(prompt: str, max_tokens: int) -> AsyncIterator[int | None]:
        stream = await client.completions.create(
            model=MODEL_NAME,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices:
                yield None
            if chunk.usage is not None:
                yield chunk.usage.completion_tokens

    return send, client
