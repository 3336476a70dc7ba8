"""The OpenAI-compatible server, as clients meet it: the real `openai` client (and the `ai21` SDK,
LangChain, LlamaIndex) against `jamba-stack serve` in a subprocess on loopback; raw HTTP and
sockets for bad input and abrupt disconnects; FastAPI's TestClient for what needs an in-process
app (a chunked oversized body, a dead engine)."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient

from jamba_runtime import EngineConfig
from jamba_runtime.async_llm import AsyncLLM
from jamba_runtime.errors import ModelNotFoundError
from jamba_stack.app.server.app import create_app
from jamba_stack.app.settings import Settings

API_KEY = "test-key"  # what the start_server fixture sets JAMBA_STACK_API_KEY to
MODEL = "tiny"
MAX_MODEL_LEN = 1024
MAX_BODY = 100_000
SERVE_ARGS = (
    "--served-model-name",
    f"{MODEL},jamba-mini",
    "--cache-memory-gb",
    "0.05",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--max-body-bytes",
    str(MAX_BODY),
    "--log-level",
    "warning",
)
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HI = [{"role": "user", "content": "Hi there"}]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert",
        "description": "Convert a length.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "integer", "minimum": 0, "maximum": 999},
                "unit": {"enum": ["m", "ft"]},
            },
            "required": ["amount", "unit"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CONVERT]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "city": {"type": "string", "maxLength": 10},
            },
            "required": ["zip"],
            "additionalProperties": False,
        },
        "score": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 10}, {"type": "null"}]},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_model_dir: Path) -> Any:
    return start_server(tiny_model_dir, *SERVE_ARGS)


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    body = {"model": MODEL, "messages": HI, "max_tokens": 16, **kwargs}
    extra = {k: body.pop(k) for k in ("ignore_eos", "documents") if k in body}  # not in OpenAI's API
    return client.chat.completions.create(**body, extra_body=extra or None)


def _metrics(server: Any) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r"^(\S+) (\S+)$", text, re.M) if not m[0].startswith("#")}


def _validate_calls(calls: Any, tools: list[dict]) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    ids = [c.id for c in calls]
    assert len(set(ids)) == len(ids) and all(i.startswith("call_") for i in ids)
    for call in calls:
        assert call.type == "function" and call.function.name in schemas
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


# ---- chat ----------------------------------------------------------------------------------------
def test_chat_usage_and_shape(client: openai.OpenAI) -> None:
    resp = _chat(client, max_tokens=12, temperature=0)
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion" and resp.model == MODEL
    (choice,) = resp.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    usage = resp.usage
    assert usage.prompt_tokens > 3 and 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # max_completion_tokens is the newer name of max_tokens; an alias of the model works too
    short = _chat(client, model="jamba-mini", max_tokens=None, max_completion_tokens=3, temperature=0)
    assert short.usage.completion_tokens <= 3 and short.model == "jamba-mini"


def test_stream_equals_non_stream_with_usage_chunk(client: openai.OpenAI) -> None:
    whole = _chat(client, max_tokens=24, temperature=0)
    chunks = list(
        _chat(client, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    plain = list(_chat(client, max_tokens=4, stream=True))
    assert all(c.usage is None for c in plain)  # no usage chunk unless asked


def test_n_choices_seed_and_stop(client: openai.OpenAI) -> None:
    resp = _chat(client, n=3, seed=11, temperature=1.0, max_tokens=10)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.message.content for c in resp.choices}) > 1  # each choice samples on its own
    again = _chat(client, n=3, seed=11, temperature=1.0, max_tokens=10)
    assert [c.message.content for c in again.choices] == [c.message.content for c in resp.choices]
    other = _chat(client, seed=12, temperature=1.0, max_tokens=10)
    assert other.choices[0].message.content != resp.choices[0].message.content

    streamed: dict[int, str] = {0: "", 1: ""}
    for chunk in _chat(client, n=2, seed=11, temperature=1.0, max_tokens=10, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == {i: resp.choices[i].message.content for i in (0, 1)}

    greedy = _chat(client, temperature=0, max_tokens=24, ignore_eos=True).choices[0].message.content
    stop = next(greedy[i : i + 3] for i in range(6, len(greedy)) if greedy[i : i + 3].isalpha())
    cut = _chat(client, temperature=0, max_tokens=24, ignore_eos=True, stop=[stop, "never-seen"]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == greedy[: greedy.index(stop)]


def test_logprobs(client: openai.OpenAI) -> None:
    resp = _chat(client, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)  # greedy picks the top token
        assert entry.token.startswith("bytes:") or entry.bytes == list(entry.token.encode())
    assert _chat(client, max_tokens=3).choices[0].logprobs is None
    # Sampled outputs reach tokens that are part of a character: each is spelled by its bytes
    # (`bytes:\xNN...`), its `bytes` are those bytes, and every token's bytes join to the text's.
    partial = 0
    for seed in range(6):
        choice = _chat(
            client, temperature=1.0, max_tokens=16, logprobs=True, top_logprobs=2, seed=seed
        ).choices[0]
        raw = b"".join(bytes(e.bytes) for e in choice.logprobs.content)
        if not choice.message.content.endswith("\ufffd"):
            assert raw.decode("utf-8", errors="replace") == choice.message.content
        for e in choice.logprobs.content:
            if e.token.startswith("bytes:"):
                partial += 1
                assert e.token == "bytes:" + "".join(f"\\x{b:02x}" for b in e.bytes)
            keys = [t.token for t in e.top_logprobs]
            assert len(set(keys)) == len(keys), keys  # no two alternatives share a spelling
    assert partial > 0, "no sampled token was part of a character: the case is not exercised"


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt=["Once upon", "The cache"], n=2, max_tokens=5, seed=3
    )
    assert resp.object == "text_completion" and [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.usage.completion_tokens <= 20 and resp.usage.prompt_tokens >= 4
    lp = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, temperature=0, logprobs=2)
    choice = lp.choices[0]
    assert len(choice.logprobs.tokens) == lp.usage.completion_tokens
    assert all(len(t) == 2 for t in choice.logprobs.top_logprobs)
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=4, temperature=0, stream=True
        )
        if c.choices
    )
    assert text == choice.text
    echoed = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once upon" + choice.text


def test_models_health_metrics(server: Any, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL, "jamba-mini"]
    assert client.models.retrieve("jamba-mini").id == "jamba-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # no key needed
    before = _metrics(server)
    _chat(client, max_tokens=2)
    m = _metrics(server)
    assert m['jamba_http_requests_total{path="/v1/chat/completions",status="200"}'] >= 1
    # Where its time to first token went: preparation, the engine's queue, the prefill.
    parts_of_ttft = (
        "jamba_request_prepare_seconds",
        "jamba_request_queue_time_seconds",
        "jamba_request_prefill_time_seconds",
    )
    for part in parts_of_ttft:
        assert m[f"{part}_count"] == before.get(f"{part}_count", 0) + 1
        assert m[f"{part}_sum"] > before.get(f"{part}_sum", 0)
    ttft = m["jamba_time_to_first_token_seconds_sum"] - before.get("jamba_time_to_first_token_seconds_sum", 0)
    parts = sum(m[f"{p}_sum"] - before.get(f"{p}_sum", 0) for p in parts_of_ttft)
    assert 0 < parts <= ttft
    assert m["jamba_prompt_tokens_total"] > 0 and m["jamba_generation_tokens_total"] > 0
    assert m["jamba_request_latency_seconds_count"] >= 1 and m["jamba_time_to_first_token_seconds_count"] >= 1
    assert m["jamba_kv_blocks_total"] > 0 and m["jamba_state_slots_total"] > 0
    assert m["jamba_steps_ahead_total"] == 0  # on CPU every step's tokens are read first
    assert m['jamba_request_finished_total{finish_reason="length"}'] >= 1


# ---- bad input -----------------------------------------------------------------------------------
def _msgs(content: Any = "hi") -> list[dict]:
    return [{"role": "user", "content": content}]


BAD_REQUESTS = [
    # (name, path, body or raw bytes, status, code, param)
    ("malformed json", "/v1/chat/completions", b'{"model": "tiny", "messages": [', 400, "invalid_json", None),
    (
        "no messages",
        "/v1/chat/completions",
        {"model": MODEL, "messages": []},
        400,
        "invalid_value",
        "messages",
    ),
    (
        "temperature",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs(), "temperature": 3},
        400,
        "invalid_value",
        "temperature",
    ),
    ("n", "/v1/chat/completions", {"model": MODEL, "messages": _msgs(), "n": 0}, 400, "invalid_value", "n"),
    (
        "role",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_value",
        "messages[0].role",
    ),
    (
        "top_logprobs alone",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs(), "top_logprobs": 2},
        400,
        "invalid_value",
        "top_logprobs",
    ),
    (
        "penalty",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs(), "presence_penalty": 1},
        400,
        "unsupported_parameter",
        "presence_penalty",
    ),
    (
        "image part",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs([{"type": "image_url", "image_url": {"url": "x"}}])},
        400,
        "invalid_value",
        "messages[0].content",
    ),
    (
        "long prompt",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs("word " * MAX_MODEL_LEN)},
        400,
        "context_length_exceeded",
        "messages",
    ),
    (
        "max_tokens",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs(), "max_tokens": MAX_MODEL_LEN},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    (
        "unknown model",
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": _msgs()},
        404,
        "model_not_found",
        "model",
    ),
    (
        "bad schema",
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": _msgs(),
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "properties": {"a": {"type": "strin"}}},
                },
            },
        },
        400,
        "invalid_value",
        "response_format.json_schema.schema",
    ),
    (
        "bad tool schema",
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": _msgs(),
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"minimum": "zero"}}},
                    },
                }
            ],
        },
        400,
        "invalid_value",
        "tools[0].function.parameters",
    ),
    (
        "bad tool name",
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": _msgs(),
            "tools": [{"type": "function", "function": {"name": "no spaces"}}],
        },
        400,
        "invalid_value",
        "tools[0].function.name",
    ),
    (
        "unknown tool_choice",
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": _msgs(),
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
        400,
        "invalid_value",
        "tool_choice",
    ),
    (
        "suffix",
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "suffix": "b"},
        400,
        "unsupported_parameter",
        "suffix",
    ),
    (
        "completion prompt",
        "/v1/completions",
        {"model": MODEL, "prompt": "word " * MAX_MODEL_LEN},
        400,
        "context_length_exceeded",
        "prompt",
    ),
    (
        "oversized body",
        "/v1/chat/completions",
        {"model": MODEL, "messages": _msgs("x" * MAX_BODY)},
        413,
        "request_too_large",
        None,
    ),
    ("unknown route", "/v1/embeddings", {"model": MODEL, "input": "x"}, 404, "not_found", None),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [r[1:] for r in BAD_REQUESTS],
    ids=[r[0] for r in BAD_REQUESTS],
)
def test_bad_requests_get_openai_errors(
    server: Any, path: str, body: Any, status: int, code: str, param: str | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = httpx.post(
        f"{server.url}{path}", content=raw, headers={**AUTH, "Content-Type": "application/json"}, timeout=60
    )
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["code"], error["param"]) == (code, param), error


def test_unenforceable_schema_is_a_400_naming_the_keyword(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "if": {"required": ["a"]},
        "then": {},
    }
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert "'if'" in info.value.body["message"] and info.value.body["param"] == "response_format"


def test_api_key(server: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        resp = httpx.post(
            f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": HI}, headers=headers
        )
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        _chat(wrong)
    m = _metrics(server)
    assert m['jamba_http_requests_total{path="other",status="401"}'] >= 3


# ---- disconnects -----------------------------------------------------------------------------------
def _post_raw(server: Any, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode() + data)
    return sock


def _close(sock: socket.socket, reset: bool) -> None:
    if reset:  # RST instead of FIN: the abrupt end a crashed client gives
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_50_abrupt_disconnects_free_everything(server: Any, client: openai.OpenAI) -> None:
    long = {"model": MODEL, "messages": HI, "max_tokens": 900, "ignore_eos": True, "temperature": 0.8}
    before = _metrics(server)["jamba_generation_tokens_total"]
    for i in range(50):
        sock = _post_raw(server, {**long, "stream": True, "n": 1 + i % 2, "seed": i})
        if i % 5 != 4:  # most after some tokens have streamed; every fifth before any
            received = b""
            while received.count(b"data: ") < 4:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the stream early"
                received += chunk
        _close(sock, reset=i % 2 == 0)
    for i in range(3):  # non-streaming requests whose client leaves while they run
        sock = _post_raw(server, long)
        time.sleep(0.3)
        _close(sock, reset=i == 0)
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**long, "stream": True}, headers=AUTH
    ) as r:
        next(r.iter_lines())  # and a client library closing a stream it no longer wants

    keys = (
        "jamba_requests_running",
        "jamba_requests_waiting",
        "jamba_kv_blocks_used",
        "jamba_state_slots_used",
        "jamba_http_requests_in_flight",
    )
    deadline = time.monotonic() + 20
    while True:
        m = _metrics(server)
        if all(m[k] == 0 for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {k: m[k] for k in keys} == dict.fromkeys(keys, 0.0)
    # 80 sequences of 900 tokens each were asked for; aborted, they made a small part of that
    assert m["jamba_generation_tokens_total"] - before < 80 * 900 / 4
    resp = _chat(client, max_tokens=4)  # and the server still serves
    assert resp.choices[0].message.content is not None
    assert httpx.get(f"{server.url}/health").status_code == 200


# ---- structured output and tools -------------------------------------------------------------------
def test_json_object_and_json_schema(client: openai.OpenAI) -> None:
    for seed in (2, 4):
        resp = _chat(
            client, seed=seed, temperature=0.7, max_tokens=256, response_format={"type": "json_object"}
        )
        choice = resp.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(json.loads(choice.message.content), dict)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    resp = _chat(client, n=2, seed=5, temperature=0.7, max_tokens=200, response_format=fmt)
    checker = jsonschema.Draft202012Validator(
        PERSON, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for choice in resp.choices:
        assert choice.finish_reason == "stop", choice.message.content
        checker.validate(json.loads(choice.message.content))
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in _chat(client, seed=5, temperature=0.7, max_tokens=200, response_format=fmt, stream=True)
        if c.choices
    )
    assert streamed == resp.choices[0].message.content


def test_tools_under_every_tool_choice(client: openai.OpenAI) -> None:
    # Seeds 0 and 1 (choices 0 and 1 of n=2) make one call and two parallel calls.
    tools = {"tools": TOOLS, "temperature": 0.7, "max_tokens": 200}
    resp = _chat(client, **tools, tool_choice="required", n=2, seed=0)
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice.message.content
        assert choice.message.content is None
        _validate_calls(choice.message.tool_calls, TOOLS)
    assert max(len(c.message.tool_calls) for c in resp.choices) >= 2  # parallel calls
    single = _chat(client, **tools, tool_choice="required", n=2, seed=0, parallel_tool_calls=False)
    assert [len(c.message.tool_calls) for c in single.choices] == [1, 1]

    named = {"type": "function", "function": {"name": "convert"}}
    choice = _chat(client, **tools, tool_choice=named, seed=0).choices[0]
    assert choice.message.tool_calls and {c.function.name for c in choice.message.tool_calls} == {"convert"}
    _validate_calls(choice.message.tool_calls, TOOLS)

    auto = _chat(client, **{**tools, "max_tokens": 30}, tool_choice="auto", seed=0).choices[0]
    if auto.message.tool_calls:
        _validate_calls(auto.message.tool_calls, TOOLS)
    else:
        assert isinstance(auto.message.content, str)
    none = _chat(client, **{**tools, "max_tokens": 10}, tool_choice="none").choices[0]
    assert not none.message.tool_calls and isinstance(none.message.content, str)


def test_streamed_tool_calls_match(client: openai.OpenAI) -> None:
    body = {"tools": TOOLS, "tool_choice": "required", "seed": 1, "temperature": 0.7, "max_tokens": 200}
    whole = _chat(client, **body).choices[0].message.tool_calls
    assert len(whole) >= 2
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in _chat(client, **body, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content  # nothing of the block leaks as content
            for tc in choice.delta.tool_calls or ():
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole
    ]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_tool_results_round_trip(client: openai.OpenAI) -> None:
    first = _chat(client, tools=[WEATHER], tool_choice="required", seed=3, temperature=0.7, max_tokens=200)
    first = first.choices[0].message
    messages = [*HI, first.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in first.tool_calls]
    follow = _chat(client, messages=messages, tools=[WEATHER], max_tokens=8)
    assert follow.usage.prompt_tokens > _chat(client, max_tokens=1).usage.prompt_tokens


# ---- other clients ---------------------------------------------------------------------------------
def test_ai21_sdk_chat_with_tools_and_documents(server: Any) -> None:
    ai21 = pytest.importorskip("ai21")
    from ai21.models.chat import DocumentSchema, UserMessage

    sdk = ai21.AI21Client(api_key=API_KEY, api_host=f"{server.url}/studio/v1", num_retries=0)
    question = [UserMessage(content="What is Jamba?")]
    docs = [
        DocumentSchema(
            content="Jamba is a hybrid Transformer-Mamba model.", id="d1", metadata={"title": "Jamba"}
        )
    ]
    plain = sdk.chat.completions.create(model="jamba-mini", messages=question, max_tokens=6)
    grounded = sdk.chat.completions.create(
        model="jamba-mini", messages=question, max_tokens=6, documents=docs
    )
    assert grounded.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the documents are in the prompt
    assert isinstance(grounded.choices[0].message.content, str)
    chunks = list(
        sdk.chat.completions.create(model="jamba-mini", messages=question, max_tokens=6, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    resp = sdk.chat.completions.create(
        model="jamba-mini",
        messages=question,
        max_tokens=160,
        documents=docs,
        tools=[WEATHER],
        tool_choice="required",
        seed=0,
    )
    calls = resp.choices[0].message.tool_calls
    assert calls and resp.choices[0].finish_reason == "tool_calls"
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    bad = ai21.AI21Client(api_key="wrong", api_host=f"{server.url}/studio/v1", num_retries=0)
    with pytest.raises(ai21.errors.Unauthorized):
        bad.chat.completions.create(model="jamba-mini", messages=question)


def test_langchain_chat_openai(server: Any) -> None:
    lc = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        """Get the weather of a city."""

        city: str = Field(max_length=10)
        days: int = Field(ge=1, le=7)

    llm = lc.ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=API_KEY,
        model=MODEL,
        max_tokens=120,
        temperature=0.8,
        seed=3,
        max_retries=0,
    )
    assert isinstance(llm.invoke("hi").content, str)
    message = llm.bind_tools([Weather], tool_choice="Weather").invoke("Weather in Oslo?")
    assert message.tool_calls and all(c["name"] == "Weather" for c in message.tool_calls)
    for call in message.tool_calls:
        Weather.model_validate(call["args"])
    for method in ("json_schema", "function_calling"):
        out = llm.with_structured_output(Weather, method=method).invoke("Weather?")
        assert isinstance(out, Weather)


def test_llamaindex_openai_like(server: Any) -> None:
    pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    common = {
        "model": MODEL,
        "api_base": f"{server.url}/v1",
        "api_key": API_KEY,
        "context_window": MAX_MODEL_LEN,
        "max_tokens": 8,
        "max_retries": 0,
    }
    chat = OpenAILike(**common, is_chat_model=True, temperature=0)
    reply = chat.chat([ChatMessage(role="user", content="hi")])
    assert isinstance(reply.message.content, str)
    streamed = "".join(r.delta or "" for r in chat.stream_chat([ChatMessage(role="user", content="hi")]))
    assert streamed == reply.message.content
    completion = OpenAILike(**common, is_chat_model=False).complete("Once upon")
    assert isinstance(completion.text, str)


# ---- in-process (TestClient) -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_llm(tiny_model_dir: Path) -> Iterator[AsyncLLM]:
    llm = AsyncLLM(model=tiny_model_dir, engine=EngineConfig(cache_memory_gb=0.02))
    yield llm
    llm.shutdown()


def test_chunked_oversized_body_and_open_server(local_llm: AsyncLLM) -> None:
    app = create_app(Settings(max_body_bytes=1000), llm=local_llm, model_names=["m"])
    with TestClient(app, base_url="http://127.0.0.1") as http:
        ok = http.post("/v1/chat/completions", json={"model": "m", "messages": HI, "max_tokens": 2})
        assert ok.status_code == 200  # no API key set: no auth

        def chunks() -> Any:  # no Content-Length: the body is counted as it arrives
            yield b'{"model": "m", "messages": [{"role": "user", "content": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}]}'

        big = http.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_dead_engine_is_503_and_unhealthy(tiny_model_dir: Path) -> None:
    llm = AsyncLLM(model=tiny_model_dir, engine=EngineConfig(cache_memory_gb=0.02))
    llm.shutdown()
    with TestClient(create_app(Settings(), llm=llm, model_names=["m"]), base_url="http://127.0.0.1") as http:
        resp = http.post("/v1/chat/completions", json={"model": "m", "messages": HI, "max_tokens": 2})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "engine_stopped"
        assert http.get("/health").status_code == 503


def test_create_app_needs_a_model_and_binds_loopback() -> None:
    assert Settings(_env_file=None).host == "127.0.0.1"
    with pytest.raises(ModelNotFoundError, match="JAMBA_STACK_MODEL"):
        create_app(Settings(model=""))


def test_concurrent_prompts_each_count_their_own_tokens(server: Any, tiny_model_dir: Path) -> None:
    """Completions and chats that arrive together (their texts tokenized in one batch) each get
    their own prompt's token count, and a prompt too long for the context fails alone."""
    import asyncio

    from jamba_runtime import Tokenizer

    tok = Tokenizer.from_dir(tiny_model_dir)
    prompts = [f"Prompt {i}: " + "lorem ipsum " * i for i in range(12)]
    chats = [[{"role": "user", "content": p}] for p in prompts[:4]]
    too_long = "word " * (2 * MAX_MODEL_LEN)

    async def run() -> list[Any]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        async with aclient:
            calls = [aclient.completions.create(model=MODEL, prompt=p, max_tokens=1) for p in prompts]
            calls += [aclient.chat.completions.create(model=MODEL, messages=m, max_tokens=1) for m in chats]  # type: ignore[arg-type]
            calls.append(aclient.completions.create(model=MODEL, prompt=too_long, max_tokens=1))
            return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(run())
    for p, resp in zip(prompts, got, strict=False):
        assert resp.usage.prompt_tokens == len(tok.encode(p))
    for m, resp in zip(chats, got[len(prompts) :], strict=False):
        assert resp.usage.prompt_tokens == len(
            tok.encode(tok.apply_chat_template(m), add_special_tokens=False)
        )
    assert isinstance(got[-1], openai.BadRequestError) and "token" in str(got[-1])
