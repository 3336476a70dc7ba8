"""The server's limits and its answers to hostile input, as clients meet them: a real
`jamba-stack serve` on loopback with small limits, the `openai` client, and raw sockets where the
attack is below HTTP's happy path (huge headers, a body that never ends, a forged Host, a client
that leaves while it waits). Every refusal is a 4xx OpenAI error body naming the limit or the
parameter, and the server goes on serving, on the same keep-alive connection too."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient

from jamba_runtime import EngineConfig
from jamba_runtime.async_llm import AsyncLLM
from jamba_stack.app.server.app import create_app
from jamba_stack.app.settings import Settings

API_KEY = "test-key"  # what the start_server fixture sets
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "tiny"
HI = [{"role": "user", "content": "Hi there"}]
MAX_MODEL_LEN = 1024
LIMITS = {
    "--max-seqs-per-request": 8,
    "--max-queued-requests": 3,
    "--default-max-tokens": 5,
    "--max-tokens-limit": 1000,
    "--max-documents": 3,
    "--max-tools": 2,
    "--max-header-bytes": 8192,
    "--body-timeout-s": 2,
}


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_model_dir: Path) -> Any:
    args = [f"{k}={v}" for k, v in LIMITS.items()]
    return start_server(
        tiny_model_dir,
        "--served-model-name",
        MODEL,
        "--cache-memory-gb",
        "0.05",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--max-num-seqs",
        "2",
        "--allowed-hosts",
        "api.internal, *.example.org",
        "--log-level",
        "warning",
        *args,
    )


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _post(server: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}{path}",
        content=raw,
        headers={**AUTH, "Content-Type": "application/json", **(headers or {})},
        timeout=120,
    )


def _error(resp: httpx.Response) -> tuple[int, str | None, str | None]:
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return resp.status_code, error["code"], error["param"]


def _metrics(server: Any) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r"^(\S+) (\S+)$", text, re.M) if not m[0].startswith("#")}


def _port(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _request(path: str, body: bytes, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response with a Content-Length from a keep-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, headers, body[:length]


# ---- limits --------------------------------------------------------------------------------------
def test_sequences_per_request(server: Any, client: openai.OpenAI) -> None:
    too_many = _post(server, "/v1/completions", {"model": MODEL, "prompt": ["a", "b", "c"], "n": 3})
    assert _error(too_many) == (400, "limit_exceeded", "prompt")
    assert "--max-seqs-per-request" in too_many.json()["error"]["message"]
    # 600 prompts x n=64 in a 4 KB body, the shape that once queued 38,400 sequences
    huge = _post(server, "/v1/completions", {"model": MODEL, "prompt": ["x"] * 600, "n": 64})
    assert _error(huge) == (400, "limit_exceeded", "prompt")
    assert _error(_post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "n": 9})) == (
        400,
        "limit_exceeded",
        "n",
    )
    ok = client.completions.create(model=MODEL, prompt=["a", "b"], n=4, max_tokens=2)
    assert len(ok.choices) == 8


def test_max_tokens_default_and_limit(server: Any, client: openai.OpenAI) -> None:
    omitted = client.chat.completions.create(model=MODEL, messages=HI, extra_body={"ignore_eos": True})
    assert omitted.usage.completion_tokens == LIMITS["--default-max-tokens"]
    assert omitted.choices[0].finish_reason == "length"
    for field in ("max_tokens", "max_completion_tokens"):
        body = {"model": MODEL, "messages": HI, field: LIMITS["--max-tokens-limit"] + 1}
        resp = _post(server, "/v1/chat/completions", body)
        assert _error(resp) == (400, "limit_exceeded", field)
        assert "--max-tokens-limit" in resp.json()["error"]["message"]
    text = {"model": MODEL, "prompt": "a", "max_tokens": LIMITS["--max-tokens-limit"] + 1}
    assert _error(_post(server, "/v1/completions", text)) == (400, "limit_exceeded", "max_tokens")


def test_documents_and_tools_per_request(server: Any) -> None:
    docs = [{"content": f"doc {i}"} for i in range(LIMITS["--max-documents"] + 1)]
    resp = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "documents": docs})
    assert _error(resp) == (400, "limit_exceeded", "documents")
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(LIMITS["--max-tools"] + 1)]
    resp = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "tools": tools})
    assert _error(resp) == (400, "limit_exceeded", "tools")
    ok = {"model": MODEL, "messages": HI, "max_tokens": 2, "documents": docs[:3], "tools": tools[:2]}
    assert _post(server, "/v1/chat/completions", ok).status_code == 200


def test_prompt_that_cannot_fit_is_refused_before_tokenizing(server: Any) -> None:
    # Far more characters than the context could hold whatever they tokenize to: refused on size.
    resp = _post(server, "/v1/completions", {"model": MODEL, "prompt": "x" * 3_000_000})
    assert _error(resp) == (400, "context_length_exceeded", "prompt")
    assert "characters" in resp.json()["error"]["message"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "y" * 3_000_000}]}
    assert _error(_post(server, "/v1/chat/completions", chat)) == (400, "context_length_exceeded", "messages")


def test_headers_too_large(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
        status, _, body = _read_response(sock)
    assert status == 431 and json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    # Headers past one network read are refused by the HTTP layer itself, before any are kept.
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        try:
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 4_000_000 + b"\r\n\r\n"
            )
        except OSError:
            pass  # the server may close before all of it is sent
        first = b""
        try:
            first = sock.recv(65536)
        except ConnectionResetError:
            pass
    assert first.startswith(b"HTTP/1.1 400") or first == b"", first[:200]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_body_that_never_finishes_is_408(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=60) as sock:
        head = _request("/v1/chat/completions", b"")
        sock.sendall(head.replace(b"Content-Length: 0", b"Content-Length: 500") + b'{"model": ')
        status, headers, body = _read_response(sock)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert headers.get("connection") == "close"


def test_queue_full_is_429_and_clients_that_leave_are_dropped(server: Any, client: openai.OpenAI) -> None:
    long = {"model": MODEL, "messages": HI, "max_tokens": 1000, "ignore_eos": True, "stream": True}

    def open_stream(body: dict) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=60)
        sock.sendall(_request("/v1/chat/completions", json.dumps(body).encode()))
        return sock

    # --max-num-seqs 2: two long streams fill the engine...
    running = [open_stream({**long, "seed": i}) for i in range(2)]
    for sock in running:
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    deadline = time.monotonic() + 60
    while _metrics(server)["jamba_requests_running"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # ...three more wait for their first token (the queue's limit; one asks for 2 choices)...
    waiting = [open_stream({**long, "n": 1 + (i == 0)}) for i in range(3)]
    while _metrics(server)["jamba_requests_waiting"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metrics(server)["jamba_requests_waiting"] == 4
    # ...and the next is refused at once with Retry-After, by raw HTTP and by the openai client.
    full = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 2})
    assert _error(full) == (429, "queue_full", None)
    assert int(full.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    # The waiting clients leave (one with a reset): their sequences leave the engine at once,
    # while the two long streams still run.
    for i, sock in enumerate(waiting):
        if i == 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    while _metrics(server)["jamba_requests_waiting"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    m = _metrics(server)
    assert m["jamba_requests_waiting"] == 0 and m["jamba_requests_running"] == 2
    for sock in running:
        sock.close()
    # Room again: a request is admitted and answered.
    while _metrics(server)["jamba_requests_running"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")


# ---- exposure ------------------------------------------------------------------------------------
def test_host_allow_list(server: Any) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 1}
    for host in ("evil.example", "example.org", "127.0.0.1.evil.example", "localhost.evil"):
        resp = _post(server, "/v1/chat/completions", body, headers={"Host": host})
        assert _error(resp) == (400, "invalid_host", None), host
    for host in ("localhost", f"127.0.0.1:{_port(server)}", "api.internal:80", "a.example.org", "[::1]:8000"):
        assert _post(server, "/v1/chat/completions", body, headers={"Host": host}).status_code == 200, host
    # probes reach /health and /metrics by whatever name
    assert httpx.get(f"{server.url}/health", headers={"Host": "10.0.0.7:8000"}).status_code == 200
    # a DNS-rebinding page's request with a forged Origin is refused the same
    forged = {"Host": "attacker.test:8000", "Origin": "http://attacker.test:8000"}
    assert httpx.get(f"{server.url}/v1/models", headers={**AUTH, **forged}).status_code == 400


def test_docs_need_the_key(server: Any) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path
        assert httpx.get(f"{server.url}{path}", headers=AUTH).status_code == 200, path
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    assert "/v1/chat/completions" in spec["paths"]


# ---- hostile bodies ------------------------------------------------------------------------------
def _nested_schema(depth: int) -> str:
    return '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth


def _nested_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def _chat(extra: str) -> bytes:
    return (
        '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], ' + extra + "}"
    ).encode()


def _rf(schema: str) -> str:
    return (
        '"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": ' + schema + "}}"
    )


def _tool(params: str) -> str:
    return '"tools": [{"type": "function", "function": {"name": "f", "parameters": ' + params + "}}]"


def _big(keyword_json: str) -> str:
    return _rf('{"type": "object", "properties": {"a": ' + keyword_json + "}}")


def _args(args: str) -> bytes:
    return (
        '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": '
        '{"name": "f", "arguments": '
        + args
        + '}}]}, {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}'
    ).encode()


HOSTILE = [
    # (name, path, raw body, status, code, param)
    ("lone high surrogate", "/v1/chat/completions", _chat('"n": 1').replace(b'"hi"', b'"x\\ud800y"'), 400,
     "invalid_value", "messages[0].content"),
    ("lone low surrogate in a prompt", "/v1/completions", b'{"model": "tiny", "prompt": "x\\udc00"}', 400,
     "invalid_value", "prompt"),
    ("lone surrogate in a tool", "/v1/chat/completions",
     _chat('"tools": [{"type": "function", "function": {"name": "f", "description": "\\udfff"}}]'), 400,
     "invalid_value", "tools[0].function.description"),
    ("invalid UTF-8", "/v1/chat/completions", _chat('"n": 1').replace(b"hi", b"h\xff\xfei"), 400,
     "invalid_json", None),
    ("JSON 1,500 deep", "/v1/chat/completions", _chat('"x": ' + _nested_list(1500)), 400, "invalid_json", None),
    ("JSON 100,000 deep", "/v1/completions", b'{"prompt": ' + _nested_list(100_000).encode() + b"}", 400,
     "invalid_json", None),
    ("schema 300 deep", "/v1/chat/completions", _chat(_rf(_nested_schema(300))), 400, "invalid_value",
     "response_format.json_schema.schema"),
    ("tool parameters 300 deep", "/v1/chat/completions", _chat(_tool(_nested_schema(300))), 400,
     "invalid_value", "tools[0].function.parameters"),
    ("document metadata 400 deep", "/v1/chat/completions",
     _chat('"documents": [{"content": "c", "metadata": {"k": ' + _nested_list(400) + "}}]"), 400,
     "invalid_value", "documents[0]"),
    ("tool-call arguments 300 deep", "/v1/chat/completions", _args('{"a": ' + _nested_list(300) + "}"),
     400, "invalid_value", "messages[1].tool_calls[0].function.arguments"),
    ("tool-call arguments as text 900 deep", "/v1/chat/completions", _args(json.dumps('{"a": ' + _nested_list(900) + "}")),
     400, "invalid_value", "messages[1].tool_calls[0].function.arguments"),
    ("structured_outputs json 300 deep", "/v1/completions",
     b'{"model": "tiny", "prompt": "a", "structured_outputs": {"json": ' + _nested_schema(300).encode() + b"}}", 400,
     "invalid_value", "structured_outputs.json"),
    ("minimum -2**64+1", "/v1/chat/completions", _chat(_big('{"type": "integer", "minimum": -18446744073709551615}')),
     400, "invalid_request", "response_format"),
    ("const 2**64", "/v1/chat/completions", _chat(_big('{"const": 18446744073709551616}')), 400,
     "invalid_request", "response_format"),
    ("enum 2**64", "/v1/chat/completions", _chat(_big('{"enum": [1, 18446744073709551616]}')), 400,
     "invalid_request", "response_format"),
    ("multipleOf 2**64", "/v1/chat/completions", _chat(_big('{"type": "integer", "multipleOf": 18446744073709551616}')),
     400, "invalid_request", "response_format"),
    ("tool maximum 2**70", "/v1/chat/completions",
     _chat(_tool('{"type": "object", "properties": {"a": {"type": "integer", "maximum": 1180591620717411303424}}}')),
     400, "invalid_request", "tools"),
    ("stream_options without stream", "/v1/chat/completions", _chat('"stream_options": {"include_usage": true}'),
     400, "invalid_value", "stream_options"),
    ("stream_options without stream (completions)", "/v1/completions",
     b'{"model": "tiny", "prompt": "a", "stream": false, "stream_options": {"include_usage": true}}', 400,
     "invalid_value", "stream_options"),
    ("tool_choice auto without tools", "/v1/chat/completions", _chat('"tool_choice": "auto"'), 400,
     "invalid_value", "tool_choice"),
    ("tool_choice required without tools", "/v1/chat/completions", _chat('"tool_choice": "required"'), 400,
     "invalid_value", "tool_choice"),
    ("the false schema", "/v1/chat/completions", _chat(_rf("false")), 400, "invalid_value",
     "response_format.json_schema.schema"),
    ("uniqueItems on objects", "/v1/chat/completions",
     _chat(_rf('{"type": "array", "items": {"type": "object"}, "uniqueItems": true}')), 400, "invalid_request",
     "response_format"),
    ("more unique items than an enum has", "/v1/chat/completions",
     _chat(_rf('{"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": true, "minItems": 3}')), 400,
     "invalid_request", "response_format"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "raw", "status", "code", "param"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_input_is_a_4xx_and_the_connection_lives(
    server: Any, path: str, raw: bytes, status: int, code: str, param: str | None
) -> None:
    ok = _request("/v1/completions", b'{"model": "tiny", "prompt": "Once upon", "max_tokens": 2}')
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=120) as sock:
        sock.sendall(_request(path, raw))
        got, _, body = _read_response(sock)
        error = json.loads(body)["error"]
        assert (got, error["code"], error["param"]) == (status, code, param), error
        # the next request on the same keep-alive connection is answered
        sock.sendall(ok)
        again, _, body = _read_response(sock)
        assert again == 200 and json.loads(body)["choices"][0]["text"] is not None


def test_tool_choice_none_without_tools_is_fine(server: Any) -> None:
    assert _post(server, "/v1/chat/completions", _chat('"tool_choice": "none"')).status_code == 200


# ---- nothing escapes ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_llm(tiny_model_dir: Path) -> Any:
    llm = AsyncLLM(model=tiny_model_dir, engine=EngineConfig(cache_memory_gb=0.02))
    yield llm
    llm.shutdown()


def test_an_unexpected_error_is_a_500_body_and_escapes_nothing(local_llm: AsyncLLM) -> None:
    app = create_app(Settings(), llm=local_llm, model_names=["m"])
    check = local_llm.engine.check_structured

    def broken(spec: Any) -> None:
        raise RuntimeError("injected")

    local_llm.engine.check_structured = broken  # type: ignore[method-assign]
    try:
        # TestClient re-raises any exception that leaves the app: none may.
        with TestClient(app, base_url="http://127.0.0.1") as http:
            body = {"model": "m", "messages": HI, "max_tokens": 2, "response_format": {"type": "json_object"}}
            resp = http.post("/v1/chat/completions", json=body)
            assert resp.status_code == 500 and resp.json()["error"]["code"] == "internal_error"
            assert "injected" not in resp.text  # the traceback goes to the log only
            assert (
                http.post("/v1/chat/completions", json={**body, "response_format": None}).status_code == 200
            )
    finally:
        local_llm.engine.check_structured = check  # type: ignore[method-assign]


# ---- schemas that are valid JSON Schema are taken ----------------------------------------------
VALID = {
    "ECMA-262 \\p{Letter}": {"type": "object", "properties": {"w": {"type": "string", "pattern": "^\\p{Letter}{1,6}$"}},
                              "required": ["w"], "additionalProperties": False},
    "minLength 2.0": {"type": "object", "properties": {"s": {"type": "string", "minLength": 2.0, "maxLength": 4.0}},
                      "required": ["s"], "additionalProperties": False},
    "true subschema": {"type": "object", "properties": {"any": True}, "required": ["any"],
                       "additionalProperties": False},
    "no-op keywords": {"type": "object", "properties": {"t": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                       "uniqueItems": False, "maxItems": 3}}, "required": ["t"], "unevaluatedProperties": True,
                       "additionalProperties": False},
    "uniqueItems strings": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 1,
                            "pattern": "^[ab]*$"}, "uniqueItems": True, "minItems": 2, "maxItems": 3}}, "required": ["tags"],
                            "additionalProperties": False},
    "uniqueItems integers": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}, "uniqueItems": True,
                             "minItems": 3, "maxItems": 4},
    "optional set of enums": {"type": "object", "properties": {"s": {"anyOf": [{"type": "array", "items": {"enum": ["x", "y", "z"]},
                              "uniqueItems": True, "minItems": 2}, {"type": "null"}]}}, "required": ["s"],
                              "additionalProperties": False},
}  # fmt: skip


@pytest.mark.parametrize("name", list(VALID))
def test_valid_schemas_are_taken_and_met(client: openai.OpenAI, name: str) -> None:
    schema = VALID[name]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    resp = client.chat.completions.create(
        model=MODEL, messages=HI, n=4, seed=1, temperature=1.3, max_tokens=120, response_format=fmt
    )
    validator = jsonschema.Draft202012Validator(schema)
    for choice in resp.choices:
        assert choice.finish_reason == "stop", choice.message.content
        value = json.loads(choice.message.content)
        if "\\p{" not in json.dumps(schema):  # Python's jsonschema cannot read \p{...} patterns
            validator.validate(value)
        else:
            assert re.fullmatch(r"[^\W\d_]{1,6}", value["w"]), value


def test_the_true_schema_is_any_json(client: openai.OpenAI) -> None:
    for body in (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": True}}},
        {"extra_body": {"structured_outputs": {"json": True}}},
    ):
        resp = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=60, seed=3, **body)
        assert resp.choices[0].finish_reason == "stop"
        json.loads(resp.choices[0].message.content)


# ---- completions logprobs ----------------------------------------------------------------------
def test_completion_logprobs_hold_the_sampled_token_and_point_into_the_text(client: openai.OpenAI) -> None:
    ends_mid_character = 0
    for seed, logprobs in [(s, lp) for s in range(12) for lp in (0, 2)]:
        resp = client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=12, temperature=1.0, seed=seed, logprobs=logprobs
        )
        lp, text = resp.choices[0].logprobs, resp.choices[0].text
        # Where the output stops inside a character, the text ends in U+FFFD and so does the
        # last token; the tokens always join to the text.
        ends_mid_character += text.endswith("\ufffd")
        assert "".join(lp.tokens) == text, seed
        for token, logprob, top, offset in zip(
            lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset, strict=True
        ):
            assert text[offset : offset + len(token)] == token
            assert len(top) in (logprobs, logprobs + 1) and logprob in top.values()
        if logprobs == 2:  # streamed, the same tokens and text
            chunks = list(
                client.completions.create(
                    model=MODEL, prompt="Once upon", max_tokens=12, temperature=1.0, seed=seed,
                    logprobs=logprobs, stream=True,
                )
            )  # fmt: skip
            streamed = [
                t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens
            ]
            assert streamed == lp.tokens and "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert ends_mid_character > 0, "no seed ended inside a character: the case is not exercised"
    # A grammar ends the text with an end-of-sequence token, which the text leaves out: so do
    # the logprobs (and the usage still counts it).
    choice = client.completions.create(
        model=MODEL,
        prompt="Yes or no?",
        max_tokens=10,
        logprobs=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    ).choices[0]
    assert choice.text in ("yes", "no") and choice.finish_reason == "stop"
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset == [
        sum(map(len, choice.logprobs.tokens[:i])) for i in range(len(choice.logprobs.tokens))
    ]
    streamed: list[str] = []
    for chunk in client.completions.create(
        model=MODEL, prompt="Yes or no?", max_tokens=10, logprobs=0, stream=True,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    ):  # fmt: skip
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.tokens
    assert "".join(streamed) in ("yes", "no")
