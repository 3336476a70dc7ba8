"""One chat interface, `ChatModel`, over the in-process runtime or a jamba-stack (or any
OpenAI-compatible) server. `retrieval`, `agents` and `ui` talk to a model only through it.

    >>> model = chat_model("data/models/tiny")              # in-process: LocalChatModel(LLM(...))
    >>> model = chat_model("http://127.0.0.1:8000", api_key="...")   # RemoteChatModel
    >>> reply = model.chat([{"role": "user", "content": "Hi"}], max_tokens=64)
    >>> reply.content, reply.finish_reason, reply.usage.total_tokens
    >>> for chunk in model.stream(messages):
    ...     print(chunk.content, end="")
    >>> reply = model.chat(messages, tools=[weather_tool], tool_choice="required")
    >>> reply.tool_calls[0].name, reply.tool_calls[0].arguments      # arguments: a dict
    >>> model.chat_json(messages, schema={"type": "object", ...})     # parsed, schema-valid

Both implementations render the same prompt (`jamba_stack.app.chat_format`): Jamba's chat template with
tools, AI21-style documents and JSON mode; structured output and forced tool calls are
grammar-constrained by the runtime. Messages are OpenAI's dicts; append `reply.to_message()` and
`{"role": "tool", "tool_call_id": ..., "content": ...}` results to continue a conversation.
"""

from __future__ import annotations

import asyncio
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import Unpack

from jamba_runtime.errors import InvalidRequestError, JambaStackError
from jamba_runtime.llm import LLM
from jamba_runtime.sampling_params import SamplingParams
from jamba_stack.app.chat_format import ChatInputs, ToolCall, ToolCallSplitter

__all__ = [
    "ChatChunk",
    "ChatModel",
    "ChatOptions",
    "ChatRequest",
    "ChatResponse",
    "LocalChatModel",
    "RemoteAPIError",
    "RemoteChatModel",
    "ToolCall",
    "Usage",
    "chat_model",
]


class ChatOptions(TypedDict, total=False):
    """Options of `chat`, `stream` and `chat_json` (all optional).

    tools: OpenAI tool definitions. tool_choice: "auto" (default with tools), "none", "required"
    or {"type": "function", "function": {"name": ...}}. json_mode: answer with a JSON object.
    json_schema: answer with JSON valid under this schema. documents: AI21's
    {"content", "id"?, "metadata"?} dicts, rendered in the template's documents section.
    max_tokens (default 512), temperature (default 0.7), top_p, seed, stop: as OpenAI's.
    """

    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: str | Mapping[str, Any] | None
    json_mode: bool
    json_schema: Mapping[str, Any] | None
    documents: Sequence[Mapping[str, Any]] | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: str | Sequence[str] | None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResponse:
    """One assistant turn. `content` is None when the model only called tools; `finish_reason`
    is "stop", "length" (cut by max_tokens or the context) or "tool_calls"."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    usage: Usage

    def to_message(self) -> dict[str, Any]:
        """The turn as an OpenAI assistant message, to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return message

    def json(self) -> Any:
        """The content parsed as JSON. Raises `InvalidRequestError` when it is not whole JSON
        (cut off by max_tokens, or JSON mode was not asked for)."""
        try:
            return json.loads(self.content or "")
        except json.JSONDecodeError as exc:
            hint = (
                "raise max_tokens" if self.finish_reason == "length" else "ask with json_mode or json_schema"
            )
            raise InvalidRequestError(f"the reply is not whole JSON ({exc}): {hint}") from None


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed turn: new `content`; the last chunk has `finish_reason`, `usage` and
    the turn's `tool_calls` (parsed once the block is whole)."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


class ChatModel(ABC):
    """A chat model. Implementations provide `_chat` and `_stream`; this base gives the typed
    options, `achat` (in a worker thread) and `chat_json`.

    Errors: `InvalidRequestError` / `ContextLengthError` for bad options or a too-long prompt,
    `ModelNotFoundError` for an unknown model; `RemoteChatModel` raises `RemoteAPIError` (with the
    server's status and code) for what the server refuses or when it cannot be reached.
    """

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Unpack[ChatOptions]) -> ChatResponse:
        """Answer the conversation with one assistant turn."""
        return self._chat(ChatRequest.make(messages, options))

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **options: Unpack[ChatOptions]
    ) -> Iterator[ChatChunk]:
        """Answer as it is generated. Closing the iterator early stops the generation."""
        return self._stream(ChatRequest.make(messages, options))

    async def achat(
        self, messages: Sequence[Mapping[str, Any]], **options: Unpack[ChatOptions]
    ) -> ChatResponse:
        """`chat` without blocking the event loop."""
        return await asyncio.to_thread(self.chat, messages, **options)

    def chat_json(self, messages: Sequence[Mapping[str, Any]], **options: Unpack[ChatOptions]) -> Any:
        """Answer in JSON (valid under `json_schema` when given, else any JSON object) and return
        it parsed. Raises `InvalidRequestError` when max_tokens cut it off."""
        if not options.get("json_schema"):
            options["json_mode"] = True
        return self.chat(messages, **options).json()

    def close(self) -> None:
        """Release what the model holds (connections); the default holds nothing."""
        return None

    @abstractmethod
    def _chat(self, request: ChatRequest) -> ChatResponse: ...

    @abstractmethod
    def _stream(self, request: ChatRequest) -> Iterator[ChatChunk]: ...


@dataclass(frozen=True)
class ChatRequest:
    """One chat turn as a `ChatModel` implementation receives it: the checked chat inputs
    (messages, tools, tool choice, documents, response format) and the sampling options.

    `ChatModel.chat` / `stream` build it with `ChatRequest.make` and pass it to the
    implementation's `_chat` / `_stream`; an implementation reads it and never builds one itself.
    """

    inputs: ChatInputs
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]

    @classmethod
    def make(cls, messages: Sequence[Mapping[str, Any]], options: ChatOptions) -> ChatRequest:
        unknown = set(options) - set(ChatOptions.__annotations__)
        if unknown:
            raise InvalidRequestError(f"unknown chat options {sorted(unknown)}: see ChatOptions")
        response_format = None
        if options.get("json_schema"):
            schema = dict(options["json_schema"] or {})
            response_format = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
        elif options.get("json_mode"):
            response_format = {"type": "json_object"}
        stop = options.get("stop") or ()
        inputs = ChatInputs(
            messages=[dict(m) for m in messages],
            tools=options.get("tools"),
            tool_choice=options.get("tool_choice"),
            documents=options.get("documents"),
            response_format=response_format,
        )
        inputs.check()
        return cls(
            inputs=inputs,
            max_tokens=options.get("max_tokens", 512),
            temperature=options.get("temperature", 0.7),
            top_p=options.get("top_p", 1.0),
            seed=options.get("seed"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
        )


# ---- in-process ----------------------------------------------------------------------------------
def local_prompt(llm: LLM, request: ChatRequest) -> tuple[list[int], SamplingParams]:
    """The prompt ids and sampling params an in-process model runs for `request` (shared by
    `LocalChatModel` and the agents' async adapter, so both answer alike)."""
    ids = request.inputs.render(llm.tokenizer)
    spec = request.inputs.structured()
    params = SamplingParams(
        max_tokens=min(request.max_tokens, max(llm.max_model_len - len(ids), 1)),
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop,
        **({"structured": spec} if spec is not None else {}),
    )
    return ids, params


class LocalChatModel(ChatModel):
    """Chat with an in-process `LLM`. One request at a time (a lock): a stream holds the model
    until it is read to the end or closed. For many concurrent users, run the server."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self._lock = threading.Lock()

    def _prepare(self, request: ChatRequest) -> tuple[list[int], SamplingParams]:
        return local_prompt(self.llm, request)

    def _splitter(self, request: ChatRequest) -> ToolCallSplitter:
        inputs = request.inputs
        return ToolCallSplitter(self.llm.tokenizer, inputs.tools if inputs.uses_tools else None)

    def _chat(self, request: ChatRequest) -> ChatResponse:
        # Through the stream: the tool-call block is found token by token, as the server does.
        text: list[str] = []
        last = ChatChunk()
        for last in self._stream(request):
            text.append(last.content)
        assert last.usage is not None, "a stream ends with its usage"
        return _response("".join(text), last.tool_calls, last.finish_reason, last.usage)

    def _stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        ids, params = self._prepare(request)
        self.llm.engine.prompt_ids(ids)  # a too-long prompt raises here, not at the first chunk
        return self._run(ids, params, self._splitter(request))

    def _run(self, ids: list[int], params: SamplingParams, splitter: ToolCallSplitter) -> Iterator[ChatChunk]:
        engine = self.llm.engine
        with self._lock:
            seq = engine.add_request(ids, params)
            try:
                while not seq.finished:
                    for out in engine.step():
                        if out.request_id != seq.request_id:
                            continue
                        text = splitter.feed(out.text, out.token_ids)
                        if out.finished:
                            rest, calls = splitter.finish()
                            reason = (
                                "tool_calls" if calls and out.finish_reason == "stop" else out.finish_reason
                            )
                            usage = Usage(len(ids), len(splitter.token_ids))
                            yield ChatChunk(text + rest, tuple(calls), reason or "stop", usage)
                        elif text:
                            yield ChatChunk(text)
            finally:
                if not seq.finished and seq.request_id in engine.requests:
                    engine.abort(seq.request_id)


# ---- remote --------------------------------------------------------------------------------------
class RemoteAPIError(JambaStackError):
    """The server refused a request (its status and error code) or could not be reached (503)."""

    def __init__(self, message: str, http_status: int, code: str | None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code or "remote_error"


class RemoteChatModel(ChatModel):
    """Chat with an OpenAI-compatible server through the `openai` client.

    Args:
        base_url: the server, e.g. "http://127.0.0.1:8000" ("/v1" is added when missing).
        api_key: the server's key (JAMBA_STACK_API_KEY there); None for an open server.
        model: the model name to send; default: the first one the server lists (GET /v1/models).
        timeout: seconds per request. max_retries: the `openai` client's retries (connection
            errors, 429 and 5xx).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
    ) -> None:
        import openai

        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries
        )
        self._model = model

    @property
    def model(self) -> str:
        """The model name requests use (asked of the server once, when not given)."""
        if self._model is None:
            models = self._call(self._client.models.list)
            if not models.data:
                raise RemoteAPIError("the server lists no models: check its --model", 404, "model_not_found")
            self._model = models.data[0].id
        return self._model

    def close(self) -> None:
        self._client.close()

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        inputs = request.inputs
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(inputs.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if inputs.tools:
            body["tools"] = [dict(t) for t in inputs.tools]
        if inputs.tool_choice is not None:
            body["tool_choice"] = inputs.tool_choice
        if inputs.response_format is not None:
            body["response_format"] = dict(inputs.response_format)
        if inputs.documents:
            body["extra_body"] = {"documents": [dict(d) for d in inputs.documents]}
        return body

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        openai = self._openai
        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as exc:
            error = (exc.body or {}).get("error", exc.body) if isinstance(exc.body, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            raise RemoteAPIError(message or str(exc), exc.status_code, code) from exc
        except openai.APIConnectionError as exc:
            raise RemoteAPIError(
                f"cannot reach the server at {self._client.base_url} ({exc}): start it with `jamba-stack serve` "
                "or fix the URL",
                503,
                "connection_error",
            ) from exc

    def _chat(self, request: ChatRequest) -> ChatResponse:
        resp = self._call(self._client.chat.completions.create, **self._body(request))
        choice = resp.choices[0]
        calls = [
            _tool_call(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()
        ]
        usage = Usage(resp.usage.prompt_tokens, resp.usage.completion_tokens) if resp.usage else Usage(0, 0)
        return _response(choice.message.content or "", calls, choice.finish_reason, usage)

    def _stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        # Sent now: a refused request raises here, not at the first chunk.
        return self._chunks(self._call(self._client.chat.completions.create, **body))

    def _chunks(self, stream: Any) -> Iterator[ChatChunk]:
        calls: dict[int, dict[str, str]] = {}
        finish_reason: str | None = None
        try:
            for chunk in stream:
                if chunk.usage is not None and not chunk.choices:
                    done = [_tool_call(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    yield ChatChunk("", tuple(done), finish_reason or "stop", usage)
                    continue
                for choice in chunk.choices:
                    delta = choice.delta
                    for tc in delta.tool_calls or ():
                        call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        call["id"] = tc.id or call["id"]
                        if tc.function is not None:
                            call["name"] += tc.function.name or ""
                            call["arguments"] += tc.function.arguments or ""
                    finish_reason = choice.finish_reason or finish_reason
                    if delta.content:
                        yield ChatChunk(delta.content)
        except self._openai.APIError as exc:
            raise RemoteAPIError(str(exc), 500, "stream_error") from exc
        finally:
            stream.close()


# ---- helpers ---------------------------------------------------------------------------------------
def _tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RemoteAPIError(
            f"tool call {name!r} has arguments that are not a JSON object: {arguments!r}", 502, None
        )
    return ToolCall(call_id, name, parsed)


def _response(text: str, calls: Sequence[ToolCall], finish_reason: str | None, usage: Usage) -> ChatResponse:
    reason = finish_reason or "stop"
    if calls and reason == "stop":
        reason = "tool_calls"
    return ChatResponse((text or None) if calls else text, tuple(calls), reason, usage)


def chat_model(target: str | Path | LLM, api_key: str | None = None, model: str | None = None) -> ChatModel:
    """A `ChatModel` for `target`: an `LLM` (in-process), a server URL ("http(s)://..."), or a
    checkpoint directory / hub id (loaded in-process on the CPU)."""
    if isinstance(target, LLM):
        return LocalChatModel(target)
    if str(target).startswith(("http://", "https://")):
        return RemoteChatModel(str(target), api_key=api_key, model=model)
    return LocalChatModel(LLM(target))
