"""`ChatModel`: the one interface everything above the runtime uses to reach a model.

    >>> from jamba_stack.chat import chat_model
    >>> model = chat_model("data/models/tiny")                      # in-process (LocalChatModel)
    >>> model = chat_model("http://127.0.0.1:8000", api_key="...")  # a server (RemoteChatModel)
    >>> reply = model.chat([{"role": "user", "content": "Hi"}], max_tokens=64)
    >>> reply.content, reply.finish_reason, reply.usage.total_tokens
    >>> for chunk in model.stream(messages):
    ...     print(chunk.content, end="")
    >>> reply = model.chat(messages, tools=[weather_tool], tool_choice="required")
    >>> reply.tool_calls[0].name, reply.tool_calls[0].arguments      # arguments: a dict
    >>> model.chat_json(messages, json_schema={"type": "object", ...})  # parsed, schema-valid
    >>> model.chat(messages, regex=r"[0-9]{3}").content                 # constrained output
    >>> model.chat_many([(m1, {"seed": 1}), (m2, {"json_mode": True})])  # batched in-process
    >>> model.count_tokens("some text"), model.context_length

Both implementations render the same prompt (`jamba_stack.chat.format`): Jamba's chat template with
tools, AI21-style documents and JSON mode; structured output and forced tool calls are
grammar-constrained by the runtime. Messages are OpenAI's dicts; append `reply.to_message()` and
`{"role": "tool", "tool_call_id": ..., "content": ...}` results to continue a conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict

from typing_extensions import Unpack

from jamba_runtime.errors import InvalidRequestError, JambaStackError
from jamba_stack.chat.format import ChatInputs
from jamba_stack.chat.tool_calls import ToolCall

Messages = Sequence[Mapping[str, Any]]
CHARS_PER_TOKEN_ESTIMATE = 3


class ChatOptions(TypedDict, total=False):
    """Options of `chat`, `stream`, `chat_json` and `chat_many` (all optional).

    tools: OpenAI tool definitions. tool_choice: "auto" (default with tools), "none", "required"
    or {"type": "function", "function": {"name": ...}}. Output constraints, at most one:
    json_mode (a JSON object), json_schema (JSON valid under it), regex (text matching it in full),
    choice (exactly one of these strings). documents: AI21's {"content", "id"?, "metadata"?}
    dicts, rendered in the template's documents section. continue_final_message: the last message
    is an assistant turn to continue (its text is kept, the model writes what follows), as
    vLLM's option of that name. max_tokens (default 512), temperature (default 0.7), top_p, seed,
    stop: as OpenAI's.
    """

    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: str | Mapping[str, Any] | None
    json_mode: bool
    json_schema: Mapping[str, Any] | None
    regex: str | None
    choice: Sequence[str] | None
    documents: Sequence[Mapping[str, Any]] | None
    continue_final_message: bool
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


@dataclass
class ModelInfo:
    """What a model is and how it is doing, for status pages.

    `mode`: "in-process" or "server". `metrics`: Prometheus sample names -> values (a server's
    `/metrics`, or the same names computed from the in-process engine). `status`: "ok" or why not.
    """

    mode: str
    name: str
    status: str = "ok"
    root: str | None = None
    device: str | None = None
    dtype: str | None = None
    context_length: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)


class ChatModel(ABC):
    """A chat model. Implementations provide `_chat` and `_stream`, and where they can
    `count_tokens`, `_count_prompt`, `context_length` and `info` (the base estimates or says
    "unknown"); this base gives the typed options, `achat` (in a worker thread), `chat_json`,
    `chat_many` (a few at a time on threads unless overridden) and `concurrent`.

    Errors: `InvalidRequestError` / `ContextLengthError` for bad options or a too-long prompt,
    `ModelNotFoundError` for an unknown model; `RemoteChatModel` raises `RemoteAPIError` (with the
    server's status and code) for what the server refuses or when it cannot be reached.
    """

    def chat(self, messages: Messages, **options: Unpack[ChatOptions]) -> ChatResponse:
        """Answer the conversation with one assistant turn."""
        return self._chat(ChatRequest.make(messages, options))

    def stream(self, messages: Messages, **options: Unpack[ChatOptions]) -> Iterator[ChatChunk]:
        """Answer as it is generated. Closing the iterator early stops the generation."""
        return self._stream(ChatRequest.make(messages, options))

    async def achat(self, messages: Messages, **options: Unpack[ChatOptions]) -> ChatResponse:
        """`chat` without blocking the event loop."""
        return await asyncio.to_thread(self.chat, messages, **options)

    def chat_json(self, messages: Messages, **options: Unpack[ChatOptions]) -> Any:
        """Answer in JSON (valid under `json_schema` when given, else any JSON object) and return
        it parsed. Raises `InvalidRequestError` when max_tokens cut it off."""
        if not options.get("json_schema"):
            options["json_mode"] = True
        return self.chat(messages, **options).json()

    def chat_many(
        self, requests: Sequence[tuple[Messages, ChatOptions]]
    ) -> list[ChatResponse | JambaStackError]:
        """Answer many conversations, each with its own options; one result per request, in
        order: its `ChatResponse`, or the `JambaStackError` it raised (a prompt too long for the
        context fails that item, not the batch). In process they run as one batch in the engine;
        over HTTP as concurrent requests."""
        made: list[ChatRequest | JambaStackError] = []
        for messages, options in requests:
            try:
                made.append(ChatRequest.make(messages, options))
            except JambaStackError as exc:
                made.append(exc)
        return self._chat_many(made)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's tokenizer (no special tokens added). The base
        estimates 1 token per 3 characters (over- rather than under-counts English); in-process
        and server models count exactly."""
        return -(-len(text) // CHARS_PER_TOKEN_ESTIMATE)

    def count_prompt_tokens(self, messages: Messages, **options: Unpack[ChatOptions]) -> int:
        """Tokens of the prompt that `chat(messages, **options)` would send: the chat template
        with its tools and documents."""
        return self._count_prompt(ChatRequest.make(messages, options))

    def _count_prompt(self, request: ChatRequest) -> int:
        """The base estimates: every message, document and tool's text, plus a few tokens each."""
        inputs = request.inputs
        texts = [str(m.get("content") or "") for m in inputs.messages]
        texts += [str(d.get("content") or d.get("text") or "") for d in inputs.documents or ()]
        texts += [json.dumps(dict(t)) for t in inputs.tools or ()]
        return sum(self.count_tokens(t) + 4 for t in texts)

    @property
    def context_length(self) -> int | None:
        """The longest prompt + completion this model takes, in tokens (None when unknown)."""
        return None

    def info(self) -> ModelInfo:
        """What the model is and its current metrics (the base knows only its name)."""
        return ModelInfo(mode="custom", name=self.name, context_length=self.context_length)

    name: str = "model"
    """What this model is called: an in-process model's checkpoint path, a server's model name."""

    prefix_requests: int = 0
    """Requests that started from the saved state of an earlier prompt (in-process concurrent
    adapters with `reuse_prefix` count them; others stay at 0)."""

    @contextlib.contextmanager
    def concurrent(self, reuse_prefix: bool = True) -> Iterator[ChatModel]:
        """A model whose `achat` calls from many tasks run at once (the agents' scheduler uses
        it); closed when the block ends. The default is this model itself: a server already
        serves requests concurrently. `reuse_prefix`: where the model can, start a prompt that
        extends an earlier one from its saved state."""
        yield self

    @property
    def max_concurrency(self) -> int | None:
        """How many requests this model runs at once, where it knows (in-process: the engine's
        `max_num_seqs`); None when it does not."""
        return None

    def close(self) -> None:
        """Release what the model holds (connections); the default holds nothing."""
        return None

    def _chat_many(
        self, requests: Sequence[ChatRequest | JambaStackError]
    ) -> list[ChatResponse | JambaStackError]:
        """Run checked requests; the default runs them on a few threads (servers batch them)."""

        def one(request: ChatRequest | JambaStackError) -> ChatResponse | JambaStackError:
            if isinstance(request, JambaStackError):
                return request
            try:
                return self._chat(request)
            except JambaStackError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="chat-many") as pool:
            return list(pool.map(one, requests))

    @abstractmethod
    def _chat(self, request: ChatRequest) -> ChatResponse: ...

    @abstractmethod
    def _stream(self, request: ChatRequest) -> Iterator[ChatChunk]: ...


@dataclass(frozen=True)
class ChatRequest:
    """One chat turn as a `ChatModel` implementation receives it: the checked chat inputs
    (messages, tools, tool choice, documents, output constraint) and the sampling options.

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
    def make(cls, messages: Messages, options: ChatOptions) -> ChatRequest:
        unknown = set(options) - set(ChatOptions.__annotations__)
        if unknown:
            raise InvalidRequestError(f"unknown chat options {sorted(unknown)}: see ChatOptions")
        response_format = None
        if options.get("json_schema"):
            schema = dict(options["json_schema"] or {})
            response_format = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
        elif options.get("json_mode"):
            response_format = {"type": "json_object"}
        constraint: dict[str, Any] = {}
        if options.get("regex") is not None:
            constraint["regex"] = options["regex"]
        if options.get("choice") is not None:
            constraint["choice"] = list(options["choice"] or ())
        stop = options.get("stop") or ()
        inputs = ChatInputs(
            messages=[dict(m) for m in messages],
            tools=options.get("tools"),
            tool_choice=options.get("tool_choice"),
            documents=options.get("documents"),
            response_format=response_format,
            structured_outputs=constraint or None,
            continue_final_message=bool(options.get("continue_final_message", False)),
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


def response_of(
    text: str, calls: Sequence[ToolCall], finish_reason: str | None, usage: Usage
) -> ChatResponse:
    """A turn from its text, tool calls and finish reason ("tool_calls" when calls ended it)."""
    reason = finish_reason or "stop"
    if calls and reason == "stop":
        reason = "tool_calls"
    return ChatResponse((text or None) if calls else text, tuple(calls), reason, usage)
