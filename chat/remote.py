"""`RemoteChatModel`: the chat seam over an OpenAI-compatible server (`jamba-stack serve`, vLLM,
or any other), through the `openai` client.

Output constraints travel as the server's fields: `response_format` for JSON mode and JSON
schemas, vLLM's `structured_outputs` for a regex or a choice (`jamba-stack serve` and vLLM take
it), `continue_final_message` as vLLM's. Tokens are counted by the server's `/tokenize` (ours and
vLLM's); a server without it gets the base's estimate of 1 token per 3 characters.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import httpx

from jamba_runtime.errors import JambaStackError
from jamba_stack.chat.model import (
    ChatChunk,
    ChatModel,
    ChatRequest,
    ChatResponse,
    ModelInfo,
    Usage,
    response_of,
)
from jamba_stack.chat.tool_calls import ToolCall


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
        self.root_url = url.removesuffix("/v1")
        self._openai = openai
        self._api_key = api_key
        self._timeout = timeout
        self._client = openai.OpenAI(
            base_url=url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries
        )
        self._model = model
        self._card: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        """The model name requests use (asked of the server once, when not given)."""
        if self._model is None:
            self._model = str(self._model_card().get("id"))
        return self._model

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.model

    def _model_card(self) -> dict[str, Any]:
        if self._card is None:
            models = self._call(self._client.models.list)
            if not models.data:
                raise RemoteAPIError("the server lists no models: check its --model", 404, "model_not_found")
            cards = [m.model_dump() for m in models.data]
            self._card = next((c for c in cards if c.get("id") == self._model), cards[0])
        return self._card

    def close(self) -> None:
        self._client.close()

    # ---- the seam --------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=4096)  # noqa: B019 - agents' memory recounts the same messages each turn
    def count_tokens(self, text: str) -> int:
        """The server's count (`POST /tokenize`), or an estimate where it has no such route."""
        if not self._tokenize_route():
            return super().count_tokens(text)
        return self._tokenize({"prompt": text, "add_special_tokens": False})

    def _count_prompt(self, request: ChatRequest) -> int:
        inputs = request.inputs
        if not self._tokenize_route():
            return super()._count_prompt(request)
        body: dict[str, Any] = {"messages": list(inputs.messages), "add_generation_prompt": True}
        if inputs.tools:
            body["tools"] = [dict(t) for t in inputs.tools]
        if inputs.documents:
            body["documents"] = [dict(d) for d in inputs.documents]
        return self._tokenize(body)

    def _tokenize(self, body: dict[str, Any]) -> int:
        resp = self._http("POST", "/tokenize", json={"model": self.model, **body})
        if resp.status_code != 200:
            raise RemoteAPIError(
                f"POST /tokenize failed ({resp.status_code}): {resp.text[:200]}", resp.status_code, None
            )
        return int(resp.json()["count"])

    @functools.cache  # noqa: B019 - one answer per model object, which lives as long as its client
    def _tokenize_route(self) -> bool:
        resp = self._http("POST", "/tokenize", json={"model": self.model, "prompt": "a"})
        return resp.status_code == 200

    @property
    def context_length(self) -> int | None:
        value = self._model_card().get("max_model_len")
        return int(value) if value else None

    def info(self) -> ModelInfo:
        """GET /health, /v1/models and /metrics. Raises `RemoteAPIError` when the server does not
        answer."""
        health = self._http("GET", "/health")
        status = (
            "ok" if health.status_code == 200 else f"unhealthy ({health.status_code}: {health.text[:200]})"
        )
        try:
            card = self._model_card()
        except RemoteAPIError as exc:
            card = {}
            status += f"; /v1/models: {exc}"
        metrics = self._http("GET", "/metrics")
        return ModelInfo(
            mode="server",
            name=str(card.get("id", "unknown")),
            status=status,
            root=card.get("root"),
            context_length=card.get("max_model_len"),
            metrics=parse_prometheus(metrics.text) if metrics.status_code == 200 else {},
        )

    def _http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            return httpx.request(
                method, self.root_url + path, headers=headers, timeout=self._timeout, **kwargs
            )
        except httpx.TransportError as exc:
            raise RemoteAPIError(
                f"cannot reach the server at {self.root_url} ({exc}): start it with `jamba-stack serve` "
                "or fix the URL",
                503,
                "connection_error",
            ) from None

    # ---- requests --------------------------------------------------------------------------------
    def _body(self, request: ChatRequest) -> dict[str, Any]:
        inputs = request.inputs
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(inputs.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        extra: dict[str, Any] = {}
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
        if inputs.structured_outputs:
            extra["structured_outputs"] = dict(inputs.structured_outputs)
        if inputs.continue_final_message:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if inputs.documents:
            extra["documents"] = [dict(d) for d in inputs.documents]
        if extra:
            body["extra_body"] = extra
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
        return response_of(choice.message.content or "", calls, choice.finish_reason, usage)

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


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value}; samples of one name with different labels are
    summed (e.g. `jamba_http_requests_total` over routes and statuses)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out
