"""The server under faults and abuse: sampling values at the edge of what floats hold never stop
the engine; one request that fails in the engine fails alone; an engine loop that dies is
reported by `/health` at once and the process exits non-zero so a supervisor restarts it.

A real `jamba-stack serve` on loopback with raw HTTP and the `openai` client; the engine faults
are injected (a raising step), in process with FastAPI's TestClient and in a real subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from jamba_runtime import LLM, EngineConfig
from jamba_runtime.async_llm import AsyncLLM
from jamba_stack.app.server.app import create_app
from jamba_stack.app.settings import Settings

API_KEY = "test-key"  # what the start_server fixture sets
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "tiny"
HI = [{"role": "user", "content": "Hi there"}]

# Values that used to pass validation and then make the sampler raise inside the engine loop,
# which stopped it for every user: each must now be answered like any other request.
EXTREME = [
    {"temperature": 1e-39},
    {"temperature": 5e-324},
    {"top_p": 1e-46},
    {"top_p": 5e-324, "temperature": 1.5},
    {"repetition_penalty": 1e-39},
    {"repetition_penalty": 5e-324, "temperature": 0},
    {"repetition_penalty": 1e300, "top_k": 1, "min_p": 1.0},
    {"temperature": 1e-30, "top_p": 1e-46, "repetition_penalty": 1e-39, "seed": 2**63 - 1},
]


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_model_dir: Path) -> Any:
    return start_server(tiny_model_dir, "--served-model-name", MODEL, "--cache-memory-gb", "0.05")


def _post(server: Any, path: str, body: dict | bytes, timeout: float = 60) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=raw, headers=headers, timeout=timeout)


def test_extreme_sampling_values_are_served_and_the_engine_lives(server: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    # A long stream runs beside the extreme requests: it must finish untouched.
    beside: dict[str, Any] = {}

    def long_stream() -> None:
        stream = client.completions.create(
            model=MODEL, prompt="The cache", max_tokens=300, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        chunks = list(stream)
        beside["text"] = "".join(c.choices[0].text for c in chunks if c.choices)
        beside["finish"] = [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    thread = threading.Thread(target=long_stream)
    thread.start()
    for fields in EXTREME:
        chat = {"model": MODEL, "messages": HI, "max_tokens": 8, **fields}
        resp = _post(server, "/v1/chat/completions", chat)
        assert resp.status_code == 200, (fields, resp.text)
        assert resp.json()["choices"][0]["finish_reason"] in ("stop", "length")
        text = {"model": MODEL, "prompt": "Once upon", "max_tokens": 8, "stream": True, "n": 2, **fields}
        text.pop("seed", None)  # n=2 with the largest seed would pass int64 (refused: tested below)
        streamed = _post(server, "/v1/completions", text)
        assert streamed.status_code == 200 and '"error"' not in streamed.text, (fields, streamed.text)
        assert streamed.text.rstrip().endswith("data: [DONE]")
    thread.join(timeout=120)
    assert beside.get("finish") == "length" and beside["text"], beside
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    again = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    assert again.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'"temperature": 1e999', "temperature"),
        (b'"repetition_penalty": 1e999', "repetition_penalty"),
        (b'"top_k": 1, "min_p": NaN', "min_p"),
        (b'"seed": 18446744073709551616', "seed"),
        (b'"seed": -9223372036854775809', "seed"),
        (b'"seed": 9223372036854775807, "n": 2', "seed"),
    ],
)
def test_values_no_float_or_int64_holds_are_400(server: Any, raw: bytes, param: str) -> None:
    body = (
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, ' + raw + b"}"
    )
    resp = _post(server, "/v1/chat/completions", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param, resp.text
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def _failing_after(llm: LLM, calls_before_failing: int) -> None:
    step, calls = llm.engine.step, []

    def failing_step():  # noqa: ANN202
        calls.append(1)
        if len(calls) > calls_before_failing:
            raise RuntimeError("injected engine fault")
        return step()

    llm.engine.step = failing_step  # type: ignore[method-assign]


def test_a_dead_engine_loop_is_reported_by_health_at_once(tiny_model_dir: Path) -> None:
    llm = LLM(model=tiny_model_dir, engine=EngineConfig(cache_memory_gb=0.02))
    _failing_after(llm, 0)
    allm = AsyncLLM.from_llm(llm)
    with TestClient(create_app(Settings(), llm=allm, model_names=["m"]), base_url="http://127.0.0.1") as http:
        assert http.get("/health").status_code == 200
        resp = http.post("/v1/chat/completions", json={"model": "m", "messages": HI, "max_tokens": 2})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "engine_stopped"
        assert allm.wait_stopped(timeout=10)
        health = http.get("/health")
        assert health.status_code == 503 and "injected engine fault" in health.json()["error"]
        assert http.head("/health").status_code == 503
    allm.shutdown()


SERVE_WITH_FAULT = """
import sys
from jamba_runtime import LLMEngine

step = LLMEngine.step
calls = []

def failing_step(self):
    calls.append(1)
    if len(calls) > {ok_steps}:
        raise RuntimeError("injected engine fault")
    return step(self)

LLMEngine.step = failing_step
from jamba_stack.app.cli import main
sys.argv = ["jamba-stack", *sys.argv[1:]]
main()
"""


def test_server_exits_nonzero_when_its_engine_dies(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Streams in flight get an error; then the process exits 1 and says why, instead of
    answering 503 for ever."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(SERVE_WITH_FAULT.format(ok_steps=5))
    args = [sys.executable, "-c", script, "serve", "--model", str(tiny_model_dir), "--port", str(port)]
    args += ["--data-dir", str(tmp_path), "--cache-memory-gb", "0.02", "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        # ignore_eos: the stream must still be running at the sixth step (the tiny model may
        # sample its end-of-sequence token earlier, and the request would finish cleanly).
        body = {
            "model": str(tiny_model_dir),
            "prompt": "Hi",
            "max_tokens": 50,
            "stream": True,
            "ignore_eos": True,
        }
        resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert resp.status_code == 200 and '"engine_stopped"' in resp.text, resp.text
        assert proc.wait(timeout=30) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "injected engine fault" in text and "error: the engine loop stopped" in text, text
