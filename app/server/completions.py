"""`POST /v1/completions`: OpenAI's (legacy) text completions on `AsyncLLM`, streaming or not.

A prompt is text or token ids, or a list of either; each gets `n` choices, numbered
`prompt_index * n + j` as OpenAI does. `echo` puts the prompt before the text. Not supported
(400): `suffix`, `best_of` other than `n`, and `echo` with `logprobs` (prompt logprobs are not
computed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from jamba_runtime import SamplingParams
from jamba_runtime.async_llm import RequestOutputDelta
from jamba_runtime.errors import JambaStackError
from jamba_runtime.tokenizer.tokenizer import IncrementalDecoder
from jamba_stack.app.server.errors import UnsupportedParameterError, sse_error
from jamba_stack.app.server.protocol import CompletionRequest
from jamba_stack.app.server.serving import (
    Admission,
    RequestTimer,
    ServerState,
    admit,
    check_stream_options,
    merge,
    resolve_max_tokens,
    sampling_params,
    structured_outputs_of,
    until_disconnect,
    usage_dict,
)
from jamba_stack.app.server.sse import DONE, SSEResponse, event
from jamba_stack.chat.format import check_structured_outputs, structured_output_of

_MIN_LOGPROB = -9999.0


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]  # type: ignore[list-item] - one prompt of token ids
    return list(prompt)  # type: ignore[arg-type]


async def create_completion(state: ServerState, body: CompletionRequest, request: Request) -> Response:
    arrived = time.monotonic()
    model = state.check_model(body.model)
    check_stream_options(body.stream, body.stream_options)
    if body.suffix:
        raise UnsupportedParameterError("suffix is not supported by this server: leave it out", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise UnsupportedParameterError(
            "best_of is not supported: leave it out or set it equal to n", "best_of"
        )
    if body.echo and body.logprobs is not None:
        raise UnsupportedParameterError(
            "echo with logprobs needs prompt logprobs, which this server does not compute: drop one", "echo"
        )
    prompts = _prompts(body.prompt)
    if not prompts:
        raise UnsupportedParameterError("prompt is empty: give at least one prompt", "prompt")
    state.limits.check_sequences(
        len(prompts) * body.n, "prompt" if len(prompts) > 1 else "n", f"{len(prompts):,} prompts x n={body.n}"
    )
    state.limits.check_max_tokens(body.max_tokens)
    for prompt in prompts:
        if isinstance(prompt, str):
            state.check_text_fits(len(prompt), "prompt")
    spec = None
    constraint = structured_outputs_of(body)
    if constraint is not None:
        check_structured_outputs(constraint)
        spec = structured_output_of(constraint)
        try:  # compiled now, so an unsupported schema is a 400 before anything streams
            await asyncio.to_thread(state.llm.engine.check_structured, spec)
        except JambaStackError as exc:
            exc.param = "structured_outputs"  # type: ignore[attr-defined]
            raise
    reply = _Reply(state, body, model, arrived)
    queued: list[tuple[list[int], list[SamplingParams]]] = []
    for prompt in prompts:
        try:
            ids = (
                await state.prompts.prompt_ids(prompt)  # with other requests' texts, off the event loop
                if isinstance(prompt, str)
                else await asyncio.to_thread(state.llm.engine.prompt_ids, prompt)
            )
        except JambaStackError as exc:
            exc.param = "prompt"  # type: ignore[attr-defined]
            raise
        max_tokens = resolve_max_tokens(state, body.max_tokens, len(ids), "prompt")
        queued.append((ids, sampling_params(body, max_tokens, body.logprobs, spec, body.n)))
        reply.prompt_tokens += len(ids)
        reply.echo_text.append(
            (prompt if isinstance(prompt, str) else state.tokenizer.decode(ids)) if body.echo else ""
        )
    admission, streams = admit(state, queued, reply.id)
    reply.timer.queued()
    reply.admission = admission
    if body.stream:
        return SSEResponse(reply.stream(streams), on_close=admission.close)
    try:
        return JSONResponse(await until_disconnect(request, reply.collect(streams)))
    finally:
        admission.close()


class _Reply:
    def __init__(self, state: ServerState, body: CompletionRequest, model: str, arrived: float) -> None:
        self.state = state
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.n = body.n
        self.with_logprobs = body.logprobs is not None
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.prompt_tokens = 0
        self.echo_text: list[str] = []
        self.timer = RequestTimer(state.metrics, arrived)
        self.admission: Admission | None = None
        self._decoders: dict[int, IncrementalDecoder] = {}

    def _on_delta(self, index: int, delta: RequestOutputDelta) -> None:
        self.timer.on_delta(delta)
        if self.admission is not None:
            self.admission.on_delta(index, delta)

    def _logprobs(self, index: int, entries: list[dict] | None, offset: int, final: bool) -> dict[str, Any]:
        """OpenAI's logprobs of one delta of choice `index`, whose text starts at `offset`;
        `final`: the choice's last delta.

        `tokens` are the text each token adds (so they join to the choice's text and
        `text_offset` points into it): a special token the text leaves out is left out here
        too, and a token that ends inside a character adds "" (the next one carries it; where
        the output ends first, the last token carries the U+FFFD the text ends with).
        `top_logprobs` (keyed by each token's own spelling) always holds the sampled token, as
        OpenAI's do, even with logprobs=0."""
        decoder = self._decoders.get(index)
        if decoder is None:
            decoder = self._decoders[index] = self.state.tokenizer.incremental_decoder()
        tokens, token_logprobs, top, offsets = [], [], [], []
        entries = entries or []
        for k, e in enumerate(entries):
            text = decoder.add(e["token_id"])
            if final and k == len(entries) - 1:
                text += decoder.flush()  # bytes held back for a character that never came
            if not text and self.state.is_special(e["token_id"]):
                continue
            logprob = max(e["logprob"], _MIN_LOGPROB)
            alternatives = {self.state.token_text(i): max(lp, _MIN_LOGPROB) for i, lp in e["top"]}
            alternatives.setdefault(self.state.token_text(e["token_id"]), logprob)
            tokens.append(text)
            token_logprobs.append(logprob)
            top.append(alternatives)
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top,
            "text_offset": offsets,
        }

    async def collect(self, streams: list[AsyncIterator[RequestOutputDelta]]) -> dict[str, Any]:
        count = len(streams)
        texts: list[list[str]] = [[self.echo_text[i // self.n]] for i in range(count)]
        entries: list[list[dict]] = [[] for _ in range(count)]
        finish: list[str | None] = [None] * count
        completion_tokens = 0
        self.state.metrics.in_flight.inc()
        try:
            async for i, delta in merge(streams):
                self._on_delta(i, delta)
                texts[i].append(delta.text)
                entries[i].extend(delta.logprobs or ())
                if delta.finished:
                    finish[i] = delta.finish_reason
                    completion_tokens += delta.usage.completion_tokens if delta.usage else 0
        finally:
            self.state.metrics.in_flight.dec()
            self.timer.done()
        choices = [
            {
                "index": i,
                "text": "".join(texts[i]),
                "logprobs": self._logprobs(i, entries[i], len(self.echo_text[i // self.n]), final=True)
                if self.with_logprobs
                else None,
                "finish_reason": finish[i],
            }
            for i in range(count)
        ]
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_dict(self.prompt_tokens, completion_tokens),
            "system_fingerprint": None,
        }

    def _chunk(self, index: int, text: str, finish_reason: str | None = None, logprobs: Any = None) -> str:
        return event(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
                ],
            }
        )

    async def stream(self, streams: list[AsyncIterator[RequestOutputDelta]]) -> AsyncIterator[str]:
        self.state.metrics.in_flight.inc()
        completion_tokens = 0
        offsets = [len(self.echo_text[i // self.n]) for i in range(len(streams))]
        try:
            for i in range(len(streams)):
                if self.echo_text[i // self.n]:
                    yield self._chunk(i, self.echo_text[i // self.n])
            async with contextlib.aclosing(merge(streams)) as deltas:
                async for i, delta in deltas:
                    self._on_delta(i, delta)
                    lps = (
                        self._logprobs(i, delta.logprobs, offsets[i], final=delta.finished)
                        if self.with_logprobs
                        else None
                    )
                    offsets[i] += sum(len(t) for t in (lps or {}).get("tokens", ()))
                    if delta.text or lps:
                        yield self._chunk(i, delta.text, logprobs=lps)
                    if delta.finished:
                        completion_tokens += delta.usage.completion_tokens if delta.usage else 0
                        yield self._chunk(i, "", finish_reason=delta.finish_reason)
            if self.include_usage:
                yield event(
                    {
                        "id": self.id,
                        "object": "text_completion",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_dict(self.prompt_tokens, completion_tokens),
                    }
                )
        except Exception as exc:  # noqa: BLE001 - the client gets it as an error event
            yield sse_error(exc)
        finally:
            self.state.metrics.in_flight.dec()
            self.timer.done()
        yield DONE
