"""What the completion endpoints share: the server's state, sampling parameters from a request,
adding a request's choices to the engine, reading them as one stream, and client disconnects.

Cancellation is how a request ends early: when the client goes away, Starlette cancels the SSE
generator (or `until_disconnect` cancels a non-streaming handler), `merge` cancels its readers,
and each reader's `aclosing` closes its `AsyncLLM` stream, which aborts the sequence and frees
its KV blocks and state slot on the engine's next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from jamba_runtime import SamplingParams, Tokenizer
from jamba_runtime.async_llm import AsyncLLM, RequestOutputDelta
from jamba_runtime.errors import ContextLengthError, InvalidRequestError, ModelNotFoundError
from jamba_stack.app.server.errors import UnsupportedParameterError
from jamba_stack.app.server.limits import RequestQueue, ServerLimits
from jamba_stack.app.server.metrics import ServerMetrics
from jamba_stack.app.server.prompt_batch import PromptBatcher
from jamba_stack.app.server.protocol import SamplingFields
from jamba_stack.chat.format import InvalidParameterError

T = TypeVar("T")
_PARAM_IN_MESSAGE = re.compile(r"^(\w+)=")


class ClientDisconnected(Exception):
    """The client closed the connection before its non-streaming response was ready."""


@dataclass
class ServerState:
    """What every handler needs; one per app (`app.state.server`)."""

    llm: AsyncLLM
    model_names: tuple[str, ...]
    metrics: ServerMetrics
    limits: ServerLimits = field(default_factory=ServerLimits)
    created: int = field(default_factory=lambda: int(time.time()))
    queue: RequestQueue = field(init=False)
    prompts: PromptBatcher = field(init=False)  # prompt texts of concurrent requests, tokenized together
    _token_text: dict[int, str] = field(default_factory=dict)
    _token_bytes: dict[int, bytes] = field(default_factory=dict)
    _max_token_chars: int | None = None
    _special: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue = RequestQueue(self.limits.max_queued_requests)
        self.prompts = PromptBatcher(self.llm.engine)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.llm.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.llm.max_model_len

    def check_model(self, name: str) -> str:
        """Raise `ModelNotFoundError` (404) unless `name` is served here."""
        if name not in self.model_names:
            raise _with_param(
                ModelNotFoundError(
                    f"the model {name!r} does not exist here: this server serves {list(self.model_names)} "
                    "(GET /v1/models); pass one of those as `model`"
                ),
                "model",
            )
        return name

    @property
    def max_token_chars(self) -> int:
        """The most characters one token of this vocabulary stands for (its longest spelling,
        which is never shorter than the text it decodes to)."""
        if self._max_token_chars is None:
            tok = self.tokenizer
            spellings = (tok.id_to_token(i) or "" for i in range(tok.vocab_size))
            self._max_token_chars = max(1, max(len(t) for t in spellings))
        return self._max_token_chars

    def check_text_fits(self, chars: int, param: str) -> None:
        """Raise `ContextLengthError` when a text of `chars` characters cannot fit the context
        however it tokenizes: a cheap bound checked before a long text is tokenized. The factor
        4 leaves room for a normalizer that composes characters (e + accent -> é) before the
        vocabulary applies."""
        bound = 4 * self.max_model_len * self.max_token_chars
        if chars > bound:
            raise _with_param(
                ContextLengthError(
                    f"the prompt has {chars:,} characters, more than this model's context of "
                    f"{self.max_model_len:,} tokens can hold: shorten it"
                ),
                param,
            )

    def is_special(self, token_id: int) -> bool:
        """Whether the token is one the text of an answer leaves out (a special token)."""
        special = self._special.get(token_id)
        if special is None:
            tok = self.tokenizer
            special = self._special[token_id] = tok.decode([token_id]) == "" and bool(
                tok.decode([token_id], skip_special_tokens=False)
            )
        return special

    def token_text(self, token_id: int) -> str:
        """One token's text (special tokens included), for logprobs. A token that is part of a
        character (a byte of a multi-byte UTF-8 sequence) would read U+FFFD, the same as every
        other such token, so it is spelled by its bytes as OpenAI spells it: `bytes:\\xe2\\x80`
        (each token then has its own key in `top_logprobs`)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if "\ufffd" in text:
                raw = self.token_bytes(token_id)
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._token_text[token_id] = text
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (what a chat logprob's `bytes` lists): those of its text,
        or, for a token that is part of a character, the raw bytes from the grammar compiler's
        tokenizer (made on first use)."""
        raw = self._token_bytes.get(token_id)
        if raw is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            raw = (
                text.encode()
                if "\ufffd" not in text
                else bytes(self.llm.engine.grammars.lltokenizer.decode_bytes([token_id]))
            )
            self._token_bytes[token_id] = raw
        return raw


def _with_param(exc: Exception, param: str) -> Exception:
    exc.param = param  # type: ignore[attr-defined] - read by errors.error_of
    return exc


def resolve_max_tokens(
    state: ServerState,
    max_tokens: int | None,
    prompt_len: int,
    prompt_param: str,
    max_tokens_param: str = "max_tokens",
) -> int:
    """The request's `max_tokens`, or the server's `default_max_tokens` (less when the context has
    less room left).

    Raises `RequestLimitError` (400) past the server's `max_tokens_limit`, `ContextLengthError`
    (400) when the prompt alone fills the context, or when the prompt plus `max_tokens` passes it
    (as OpenAI and vLLM answer; the runtime itself would stop there)."""
    state.limits.check_max_tokens(max_tokens, max_tokens_param)
    limit = state.max_model_len
    if prompt_len >= limit:
        raise _with_param(
            ContextLengthError(
                f"the prompt has {prompt_len:,} tokens and this model's context is {limit:,} tokens, "
                "one of which must be left for the answer: shorten the prompt"
            ),
            prompt_param,
        )
    if max_tokens is None:
        limits = state.limits
        return min(limits.default_max_tokens, limits.max_tokens_limit, limit - prompt_len)
    if prompt_len + max_tokens > limit:
        raise _with_param(
            ContextLengthError(
                f"max_tokens={max_tokens:,} plus the prompt's {prompt_len:,} tokens passes this model's context "
                f"of {limit:,} tokens: ask for at most {limit - prompt_len:,} tokens or shorten the prompt"
            ),
            max_tokens_param,
        )
    return max_tokens


def sampling_params(
    req: SamplingFields,
    max_tokens: int,
    logprobs: int | None = None,
    structured: Any = None,
    n: int = 1,
) -> list[SamplingParams]:
    """One `SamplingParams` per choice. With a seed, choice i uses seed + i: reproducible, and
    the n choices differ.

    Raises `UnsupportedParameterError` for penalties and logit_bias (not implemented: they would
    change the output), `InvalidParameterError` for values the runtime refuses."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise UnsupportedParameterError(
                f"{name}={getattr(req, name)} is not supported by this server: leave it at 0, or use "
                "repetition_penalty (> 1 discourages repeats)",
                name,
            )
    if req.logit_bias:
        raise UnsupportedParameterError(
            "logit_bias is not supported by this server: leave it out", "logit_bias"
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    extra: dict[str, Any] = {"structured": structured} if structured is not None else {}
    out = []
    for i in range(n):
        try:
            out.append(
                SamplingParams(
                    max_tokens=max_tokens,
                    temperature=1.0 if req.temperature is None else req.temperature,
                    top_p=1.0 if req.top_p is None else req.top_p,
                    top_k=req.top_k or 0,
                    min_p=req.min_p or 0.0,
                    repetition_penalty=req.repetition_penalty or 1.0,
                    seed=None if req.seed is None else req.seed + i,
                    stop=tuple(stop),
                    ignore_eos=bool(req.ignore_eos),
                    logprobs=logprobs,
                    **extra,
                )
            )
        except InvalidRequestError as exc:
            if isinstance(exc, InvalidParameterError):
                raise
            match = _PARAM_IN_MESSAGE.match(str(exc))
            raise InvalidParameterError(str(exc), match.group(1) if match else None) from None
    return out


def check_stream_options(stream: bool | None, options: Any) -> None:
    """`stream_options` is about the stream: without `stream: true` it is a mistake (as OpenAI and
    vLLM answer)."""
    if options is not None and not stream:
        raise InvalidParameterError(
            "stream_options is only allowed with stream=true: set stream=true, or leave stream_options out",
            "stream_options",
        )


def structured_outputs_of(req: SamplingFields) -> dict[str, Any] | None:
    """vLLM's structured-output fields as one `structured_outputs` dict, None when none is set.
    Raises `InvalidParameterError` when both `structured_outputs` and `guided_*` fields are given
    (checking what is inside is `chat.format.check_structured_outputs`'s)."""
    legacy = {
        "json": req.guided_json,
        "regex": req.guided_regex,
        "choice": req.guided_choice,
        "grammar": req.guided_grammar,
    }
    legacy = {k: v for k, v in legacy.items() if v is not None}
    if legacy and req.structured_outputs:
        raise InvalidParameterError(
            "give structured_outputs or the guided_* fields, not both", "structured_outputs"
        )
    return dict(req.structured_outputs or legacy) or None


_DONE = object()


async def merge(
    streams: Sequence[AsyncIterator[RequestOutputDelta]],
) -> AsyncIterator[tuple[int, RequestOutputDelta]]:
    """Read several streams at once; yield (choice index, delta) as deltas come.

    Closing or cancelling this generator cancels the readers, and each reader closes its stream,
    so every sequence is aborted. Its `finally` must not await: under a cancelled scope (a client
    that went away) an await would raise at once and skip the rest."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutputDelta]) -> None:
        try:
            async with contextlib.aclosing(stream) as deltas:  # type: ignore[type-var]
                async for delta in deltas:
                    queue.put_nowait((index, delta))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait((index, exc))
        finally:
            queue.put_nowait((index, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


class Admission:
    """One request's choices in the engine and its place in the server's queue.

    `admit` takes a queue place (429 when the queue is full) and adds the choices (all or none);
    `started` leaves the queue at the first token; `close` (idempotent, whenever the request ends:
    done, failed or its client gone) leaves the queue and aborts every choice still in the engine,
    waiting ones included, without waiting for their streams to be read or collected."""

    def __init__(self, state: ServerState, request_ids: list[str]) -> None:
        self.state = state
        self.request_ids = request_ids
        self.ticket = state.queue.admit()
        self._finished: set[int] = set()
        self._closed = False

    def on_delta(self, index: int, delta: RequestOutputDelta) -> None:
        """Note a delta of choice `index` (its first leaves the queue; its last ends the choice)."""
        self.ticket.started()
        if delta.finished:
            self._finished.add(index)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ticket.release()
        llm = self.state.llm
        if llm.stopped:
            return
        for i, rid in enumerate(self.request_ids):
            if i not in self._finished:
                _background(llm.abort(rid))


_BACKGROUND: set[asyncio.Task[Any]] = set()


def _background(work: Awaitable[Any]) -> None:
    """Run `work` without awaiting it; its errors (an id that already ended) are dropped."""

    async def quietly() -> None:
        with contextlib.suppress(Exception):
            await work

    task = asyncio.ensure_future(quietly())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def admit(
    state: ServerState, prompts: Sequence[tuple[list[int], Sequence[SamplingParams]]], request_id: str
) -> tuple[Admission, list[AsyncIterator[RequestOutputDelta]]]:
    """Queue every choice of a request (`prompts`: each prompt with its choices' params), ids
    `request_id-p-i` (or `request_id-i` for a single prompt). Raises `QueueFullError` (429) when
    the server's queue is full, and what `AsyncLLM.add_request` raises (then nothing is queued)."""
    ids = [
        f"{request_id}-{i}" if len(prompts) == 1 else f"{request_id}-{p}-{i}"
        for p, (_, params) in enumerate(prompts)
        for i in range(len(params))
    ]
    admission = Admission(state, ids)
    streams: list[AsyncIterator[RequestOutputDelta]] = []
    try:
        k = 0
        for prompt, params in prompts:
            for p in params:
                streams.append(state.llm.add_request(prompt, p, request_id=ids[k]))
                k += 1
    except BaseException:
        streams.clear()
        admission.close()
        raise
    return admission, streams


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it (aborting its sequences) and raise
    `ClientDisconnected`. For non-streaming responses, which Starlette does not watch."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected()
    return task.result()


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class RequestTimer:
    """Times one generation request for the metrics, from `start` (when its handler began): the
    preparation before the engine has it (`queued`), first token, end, finish reasons."""

    metrics: ServerMetrics
    start: float = field(default_factory=time.monotonic)
    first: bool = True

    def queued(self) -> None:
        """The request was handed to the engine: what came before (checks, chat template,
        tokenizing) is its preparation time."""
        self.metrics.prepare.observe(time.monotonic() - self.start)

    def on_delta(self, delta: RequestOutputDelta) -> None:
        if self.first and delta.token_ids:
            self.first = False
            self.metrics.ttft.observe(time.monotonic() - self.start)
        if delta.finished:
            self.metrics.finished.labels(delta.finish_reason or "unknown").inc()

    def done(self) -> None:
        self.metrics.latency.observe(time.monotonic() - self.start)
