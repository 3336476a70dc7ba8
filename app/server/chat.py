"""`POST /v1/chat/completions` (and AI21's `/studio/v1/chat/completions`): OpenAI's chat API on
`AsyncLLM`, streaming or not, with tools, JSON mode / JSON schema, AI21's documents, n choices,
logprobs and usage.

Tool calls: the model writes `<tool_calls>[{"name", "arguments"}]</tool_calls>`; content before
the block streams as it comes, the block is parsed when the choice ends and sent as OpenAI
`tool_calls` (JSON-string arguments, fresh `call_` ids), one delta per call in streams.
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

from jamba_runtime.async_llm import RequestOutputDelta
from jamba_runtime.errors import InvalidRequestError
from jamba_stack.app.server.errors import sse_error
from jamba_stack.app.server.protocol import ChatCompletionRequest
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
from jamba_stack.chat.format import ChatInputs, InvalidParameterError
from jamba_stack.chat.tool_calls import ToolCall, ToolCallSplitter

_MIN_LOGPROB = -9999.0  # JSON has no -inf


def chat_inputs(body: ChatCompletionRequest) -> ChatInputs:
    """The request's chat inputs. Raises `InvalidParameterError` for what they cannot express."""
    choice = body.tool_choice
    if choice is not None and choice != "none" and not body.tools:
        # As vLLM: "none" is the default without tools, any other tool_choice needs them.
        raise InvalidParameterError(
            f"tool_choice={choice if isinstance(choice, str) else choice.model_dump()!r} needs tools: "
            "pass the tools, or leave tool_choice out",
            "tool_choice",
        )
    if body.continue_final_message == body.add_generation_prompt:
        raise InvalidParameterError(
            "continue_final_message continues the last assistant message instead of opening a new turn: "
            "set add_generation_prompt=false with it, and leave both at their defaults otherwise",
            "continue_final_message" if body.continue_final_message else "add_generation_prompt",
        )
    return ChatInputs(
        messages=[m.model_dump(exclude_none=True) for m in body.messages],
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        tool_choice=choice.model_dump() if choice is not None and not isinstance(choice, str) else choice,
        documents=[d.model_dump(exclude_none=True) for d in body.documents] if body.documents else None,
        response_format=body.response_format.model_dump(by_alias=True, exclude_none=True)
        if body.response_format
        else None,
        structured_outputs=structured_outputs_of(body),
        continue_final_message=body.continue_final_message,
    )


async def create_chat_completion(
    state: ServerState, body: ChatCompletionRequest, request: Request, ai21: bool = False
) -> Response:
    """Answer one chat request. `ai21`: AI21's path, whose SDK reads logprobs in another shape,
    so they are left out there."""
    arrived = time.monotonic()
    model = state.check_model(body.model)
    check_stream_options(body.stream, body.stream_options)
    limits = state.limits
    limits.check_sequences(body.n, "n", f"n={body.n} choices")
    limits.check_count(len(body.documents or ()), "max_documents", "documents")
    limits.check_count(len(body.tools or ()), "max_tools", "tools")
    inputs = chat_inputs(body)
    state.check_text_fits(inputs.text_size(), "messages")
    # Template and tokenizer off the event loop: a long prompt would stall every other stream.
    prompt = await state.prompts.template_ids(await asyncio.to_thread(inputs.render_text, state.tokenizer))
    asked = body.max_completion_tokens or body.max_tokens
    max_tokens = resolve_max_tokens(
        state,
        asked,
        len(prompt),
        "messages",
        "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
    )
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidParameterError("top_logprobs needs logprobs=true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    spec = inputs.structured()
    if spec is not None:
        # Compile the grammar now (cached for the engine), off the event loop, so an unsupported
        # schema is a 400 here rather than an error event after the stream has started.
        try:
            await asyncio.to_thread(state.llm.engine.check_structured, spec)
        except InvalidRequestError as exc:
            exc.param = inputs.constraint_param  # type: ignore[attr-defined]
            raise
    params = sampling_params(body, max_tokens, logprobs, spec, body.n)
    reply = _Reply(state, body, inputs, model, len(prompt), ai21, arrived)
    admission, streams = admit(state, [(prompt, params)], reply.id)
    reply.timer.queued()
    reply.admission = admission
    if body.stream:
        return SSEResponse(reply.stream(streams), on_close=admission.close)
    try:
        return JSONResponse(await until_disconnect(request, reply.collect(streams)))
    finally:
        admission.close()


class _Reply:
    """One request's answer being built, from its choices' deltas."""

    def __init__(
        self,
        state: ServerState,
        body: ChatCompletionRequest,
        inputs: ChatInputs,
        model: str,
        prompt_tokens: int,
        ai21: bool,
        arrived: float,
    ) -> None:
        self.state = state
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.n = body.n
        self.prompt_tokens = prompt_tokens
        self.with_logprobs = bool(body.logprobs) and not ai21
        self.single_call = body.parallel_tool_calls is False
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        tools = inputs.tools if inputs.uses_tools else None
        self.splitters = [ToolCallSplitter(state.tokenizer, tools) for _ in range(body.n)]
        self.timer = RequestTimer(state.metrics, arrived)
        self.admission: Admission | None = None

    def _on_delta(self, index: int, delta: RequestOutputDelta) -> None:
        self.timer.on_delta(delta)
        if self.admission is not None:
            self.admission.on_delta(index, delta)

    def _calls(self, calls: list[ToolCall]) -> list[ToolCall]:
        return calls[:1] if self.single_call else calls

    def _logprobs(self, entries: list[dict] | None) -> list[dict[str, Any]]:
        out = []
        state = self.state
        for e in entries or ():
            top = [
                {
                    "token": state.token_text(i),
                    "logprob": max(lp, _MIN_LOGPROB),
                    "bytes": list(state.token_bytes(i)),
                }
                for i, lp in e["top"]
            ]
            out.append(
                {
                    "token": state.token_text(e["token_id"]),
                    "logprob": max(e["logprob"], _MIN_LOGPROB),
                    "bytes": list(state.token_bytes(e["token_id"])),
                    "top_logprobs": top,
                }
            )
        return out

    @staticmethod
    def _finish_reason(reason: str | None, calls: list[ToolCall]) -> str | None:
        return "tool_calls" if calls and reason == "stop" else reason

    async def collect(self, streams: list[AsyncIterator[RequestOutputDelta]]) -> dict[str, Any]:
        n = self.n
        content: list[list[str]] = [[] for _ in range(n)]
        logprobs: list[list[dict]] = [[] for _ in range(n)]
        choices: list[dict[str, Any] | None] = [None] * n
        completion_tokens = 0
        self.state.metrics.in_flight.inc()
        try:
            async for i, delta in merge(streams):
                self._on_delta(i, delta)
                content[i].append(self.splitters[i].feed(delta.text, delta.token_ids))
                logprobs[i].extend(self._logprobs(delta.logprobs))
                if not delta.finished:
                    continue
                completion_tokens += delta.usage.completion_tokens if delta.usage else 0
                rest, calls = self.splitters[i].finish()
                calls = self._calls(calls)
                text = "".join(content[i]) + rest
                choices[i] = {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": (text or None) if calls else text,
                        "tool_calls": [c.to_openai() for c in calls] or None,
                    },
                    "logprobs": {"content": logprobs[i]} if self.with_logprobs else None,
                    "finish_reason": self._finish_reason(delta.finish_reason, calls),
                }
        finally:
            self.state.metrics.in_flight.dec()
            self.timer.done()
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_dict(self.prompt_tokens, completion_tokens),
            "system_fingerprint": None,
        }

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: list | None = None,
    ) -> str:
        return event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": index,
                        "delta": delta,
                        "logprobs": {"content": logprobs} if logprobs else None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
        )

    async def stream(self, streams: list[AsyncIterator[RequestOutputDelta]]) -> AsyncIterator[str]:
        """SSE events: a role delta per choice, content deltas, tool-call deltas, a finish delta
        per choice, the usage chunk when asked, `[DONE]`. An error after the start is sent as an
        error event (the status is already 200)."""
        self.state.metrics.in_flight.inc()
        completion_tokens = 0
        try:
            for i in range(self.n):
                yield self._chunk(i, {"role": "assistant", "content": ""})
            # aclosing: a client gone while a chunk is sent closes this generator at a `yield`;
            # closing `merge` then aborts every choice at once, not when it is collected.
            async with contextlib.aclosing(merge(streams)) as deltas:
                async for i, delta in deltas:
                    self._on_delta(i, delta)
                    text = self.splitters[i].feed(delta.text, delta.token_ids)
                    lps = self._logprobs(delta.logprobs) if self.with_logprobs else None
                    if text or lps:
                        yield self._chunk(i, {"content": text}, logprobs=lps)
                    if not delta.finished:
                        continue
                    completion_tokens += delta.usage.completion_tokens if delta.usage else 0
                    rest, calls = self.splitters[i].finish()
                    calls = self._calls(calls)
                    if rest:
                        yield self._chunk(i, {"content": rest})
                    for k, call in enumerate(calls):
                        yield self._chunk(i, {"tool_calls": [{"index": k, **call.to_openai()}]})
                    yield self._chunk(i, {}, finish_reason=self._finish_reason(delta.finish_reason, calls))
            if self.include_usage:
                yield event(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
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
