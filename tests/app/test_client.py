"""`ChatModel`: the in-process model and a `jamba-stack serve` subprocess give the same answers
through one interface (same prompt, same sampling), with streaming, tools, JSON mode and
documents; and each fails with typed errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from jamba_runtime import LLM, EngineConfig
from jamba_runtime.errors import ContextLengthError, InvalidRequestError
from jamba_stack.chat import (
    ChatModel,
    LocalChatModel,
    RemoteAPIError,
    RemoteChatModel,
    chat_model,
)

MAX_MODEL_LEN = 1024
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
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 16},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
DOCS = [
    {"content": "Jamba interleaves Mamba and attention layers.", "id": "d1", "metadata": {"title": "Jamba"}}
]


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(tiny_model_dir, max_model_len=MAX_MODEL_LEN, engine=EngineConfig(cache_memory_gb=0.02))


@pytest.fixture(scope="module")
def local(llm: LLM) -> LocalChatModel:
    return LocalChatModel(llm)


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_model_dir: Path) -> Any:
    return start_server(
        tiny_model_dir,
        "--served-model-name",
        "tiny",
        "--cache-memory-gb",
        "0.05",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--log-level",
        "warning",
    )


@pytest.fixture(scope="module")
def remote(server: Any) -> Iterator[RemoteChatModel]:
    model = RemoteChatModel(server.url, api_key=server.api_key, max_retries=0)
    yield model
    model.close()


@pytest.fixture(params=["local", "remote"])
def model(request: pytest.FixtureRequest) -> ChatModel:
    return request.getfixturevalue(request.param)


def test_local_and_remote_answer_alike(local: LocalChatModel, remote: RemoteChatModel) -> None:
    assert remote.model == "tiny"  # asked of the server
    a = local.chat(HI, max_tokens=20, temperature=0)
    b = remote.chat(HI, max_tokens=20, temperature=0)
    assert (a.content, a.finish_reason, a.usage) == (b.content, b.finish_reason, b.usage)
    assert a.usage.completion_tokens <= 20 and a.tool_calls == ()
    seeded = [m.chat(HI, max_tokens=12, temperature=0.9, seed=4).content for m in (local, remote)]
    assert seeded[0] == seeded[1]
    grounded = [m.chat(HI, max_tokens=2, documents=DOCS).usage.prompt_tokens for m in (local, remote)]
    assert grounded[0] == grounded[1] > a.usage.prompt_tokens + 10  # the documents are in both prompts


def test_stream(model: ChatModel) -> None:
    whole = model.chat(HI, max_tokens=16, temperature=0)
    chunks = list(model.stream(HI, max_tokens=16, temperature=0))
    assert "".join(c.content for c in chunks) == whole.content
    last = chunks[-1]
    assert last.finish_reason == whole.finish_reason and last.usage == whole.usage
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_closing_a_local_stream_aborts_it(local: LocalChatModel, llm: LLM) -> None:
    stream = local.stream(HI, max_tokens=500, temperature=0.8)
    next(stream)
    next(stream)
    stream.close()
    assert not llm.engine.requests and llm.engine.metrics().kv_blocks_used == 0
    assert local.chat(HI, max_tokens=2).usage.completion_tokens <= 2  # the model is free again


def test_tools_and_json(model: ChatModel) -> None:
    reply = model.chat(HI, tools=[WEATHER], tool_choice="required", temperature=0.7, seed=3, max_tokens=200)
    assert reply.finish_reason == "tool_calls" and reply.content is None and reply.tool_calls
    for call in reply.tool_calls:
        assert call.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(call.arguments, WEATHER["function"]["parameters"])
    messages = [*HI, reply.to_message()]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "sunny, 21 C"} for c in reply.tool_calls]
    follow = model.chat(messages, tools=[WEATHER], max_tokens=4)
    assert follow.usage.prompt_tokens > reply.usage.prompt_tokens

    last = list(
        model.stream(HI, tools=[WEATHER], tool_choice="required", temperature=0.7, seed=3, max_tokens=200)
    )[-1]
    assert [(c.name, c.arguments) for c in last.tool_calls] == [
        (c.name, c.arguments) for c in reply.tool_calls
    ]

    data = model.chat_json(HI, json_schema=ANSWER, seed=3, max_tokens=120)
    jsonschema.validate(data, ANSWER)
    assert isinstance(model.chat_json(HI, seed=2, max_tokens=200), dict)


def test_same_structured_output_local_and_remote(local: LocalChatModel, remote: RemoteChatModel) -> None:
    kwargs: dict[str, Any] = {"json_schema": ANSWER, "seed": 7, "max_tokens": 120}
    assert local.chat_json(HI, **kwargs) == remote.chat_json(HI, **kwargs)


def test_typed_errors(local: LocalChatModel, remote: RemoteChatModel, server: Any) -> None:
    too_long = [{"role": "user", "content": "word " * MAX_MODEL_LEN}]
    with pytest.raises(ContextLengthError):
        local.chat(too_long, max_tokens=4)
    with pytest.raises(RemoteAPIError) as info:
        remote.chat(too_long, max_tokens=4)
    assert (info.value.http_status, info.value.code) == (400, "context_length_exceeded")
    with pytest.raises(RemoteAPIError) as info:
        RemoteChatModel(server.url, api_key="wrong", model="tiny", max_retries=0).chat(HI)
    assert (info.value.http_status, info.value.code) == (401, "invalid_api_key")
    with pytest.raises(RemoteAPIError) as info:
        RemoteChatModel(server.url, api_key=server.api_key, model="gpt-4", max_retries=0).chat(HI)
    assert (info.value.http_status, info.value.code) == (404, "model_not_found")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(RemoteAPIError) as info:
        RemoteChatModel(f"http://127.0.0.1:{closed_port}", model="x", max_retries=0, timeout=5).chat(HI)
    assert info.value.http_status == 503 and "jamba-stack serve" in str(info.value)
    with pytest.raises(InvalidRequestError, match="unknown chat options"):
        local.chat(HI, max_new_tokens=3)  # type: ignore[call-arg]
    with pytest.raises(InvalidRequestError, match="tool_choice"):
        local.chat(HI, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        local.chat_json(HI, json_schema=ANSWER, max_tokens=3)  # cut off: not whole JSON


def test_factory_and_async(llm: LLM, server: Any) -> None:
    assert isinstance(chat_model(llm), LocalChatModel)
    remote = chat_model(server.url + "/v1", api_key=server.api_key)
    assert isinstance(remote, RemoteChatModel) and remote.model == "tiny"
    reply = asyncio.run(remote.achat(HI, max_tokens=3))
    assert reply.usage.completion_tokens <= 3
    remote.close()
