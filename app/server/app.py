"""The OpenAI-compatible HTTP server: `create_app(settings, llm=...)` builds the FastAPI app,
`serve(...)` runs it under uvicorn (what `jamba-stack serve` calls).

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models[/{id}]`,
`POST /tokenize` (vLLM's), AI21's
`POST /studio/v1/chat/completions` (the `ai21` SDK with `api_host="http://HOST:PORT/studio/v1"`),
`GET /health`, `GET /metrics` (Prometheus). With an API key set, `/v1/*`, `/studio/*`, `/tokenize` and
the docs (`/docs`, `/redoc`, `/openapi.json`) need `Authorization: Bearer KEY`; only Host headers on
the allow-list are answered (`allowed_hosts`). `/health` and `/metrics` stay open for probes and
scrapers. Limits on what one request may ask: `limits.py`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jamba_runtime.async_llm import AsyncLLM
from jamba_runtime.errors import EngineStoppedError, ModelNotFoundError
from jamba_stack.app.server.chat import create_chat_completion
from jamba_stack.app.server.completions import create_completion
from jamba_stack.app.server.errors import (
    AuthenticationError,
    HeadersTooLargeError,
    InvalidHostError,
    RequestTimeoutError,
    RequestTooLargeError,
    error_headers,
    error_of,
    error_of_unexpected,
    install_error_handlers,
    logger,
)
from jamba_stack.app.server.limits import HostAllowList, ServerLimits, lone_surrogate
from jamba_stack.app.server.metrics import CONTENT_TYPE, ServerMetrics
from jamba_stack.app.server.models import get_model, list_models
from jamba_stack.app.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from jamba_stack.app.server.serving import ClientDisconnected, ServerState
from jamba_stack.app.server.tokenize import tokenize
from jamba_stack.app.settings import Settings
from jamba_stack.chat.format import InvalidParameterError

# With an API key set these need it; the interactive docs and the schema too (they list every route).
_PROTECTED_PREFIXES = ("/v1/", "/studio/", "/tokenize", "/docs", "/redoc", "/openapi.json")
# Probes and scrapers reach these by address, without the key: no Host or key check.
_OPEN_PATHS = frozenset({"/health", "/metrics"})
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def served_model_names(settings: Settings) -> tuple[str, ...]:
    """`served_model_name` (comma-separated aliases), else the model as configured."""
    names = [n.strip() for n in settings.served_model_name.split(",") if n.strip()]
    return tuple(names) or (settings.model or "jamba-tiny",)


def create_app(
    settings: Settings, llm: AsyncLLM | None = None, model_names: Sequence[str] | None = None
) -> FastAPI:
    """Build the API over `llm` (its owner shuts it down), or over a model loaded from
    `settings.model`, which the app then owns and shuts down with its lifespan.

    `model_names`: the names requests may use (default `served_model_names(settings)`); any other
    name is a 404. Raises `ModelNotFoundError` when neither `llm` nor `settings.model` is given.
    """
    owned = llm is None
    if llm is None:
        if not settings.model:
            raise ModelNotFoundError("no model to serve: pass llm=, or set JAMBA_STACK_MODEL / --model")
        llm = AsyncLLM(model=settings.model, device=settings.device, dtype=settings.dtype)
    limits = ServerLimits.from_settings(settings)
    state = ServerState(
        llm, tuple(model_names or served_model_names(settings)), ServerMetrics(llm), limits=limits
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Warm up in the background: with its optional format checkers, `import jsonschema` takes
        # seconds, which the first request with a schema would otherwise wait for.
        threading.Thread(target=importlib.import_module, args=("jsonschema",), daemon=True).start()
        yield
        if owned:
            await state.llm.aclose()

    app = FastAPI(title="jamba-stack", summary="OpenAI-compatible Jamba API", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(_routes(state))
    app.add_middleware(
        _EdgeMiddleware,
        api_key=settings.api_key,
        limits=limits,
        hosts=HostAllowList.from_settings(settings),
        state=state,
    )
    return app


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (408, "the body did not arrive in time"),
        (413, "request too large"),
        (431, "headers too large"),
        (429, "queue full: retry after Retry-After seconds"),
        (500, "internal error"),
        (503, "engine stopped"),
    )
}
_STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "SSE chunks, then [DONE]"}}}


def _documented(model: type) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of a completion route: its JSON body (or SSE with stream=true), errors."""
    return {200: {"model": model, "content": _STREAM}, **_ERRORS}


def _routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    # Handlers build their bodies as dicts (hot path); the models document them for OpenAPI.
    @router.post("/v1/chat/completions", response_model=None, responses=_documented(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _guarded(request, create_chat_completion(state, body, request))

    @router.post(
        "/studio/v1/chat/completions", response_model=None, responses=_documented(ChatCompletionResponse)
    )
    async def ai21_chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _guarded(request, create_chat_completion(state, body, request, ai21=True))

    @router.post("/v1/completions", response_model=None, responses=_documented(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _guarded(request, create_completion(state, body, request))

    @router.post("/tokenize")
    async def tokenize_route(body: TokenizeRequest) -> TokenizeResponse:
        return await tokenize(state, body)

    @router.get("/v1/models")
    async def models() -> ModelList:
        return list_models(state)

    @router.get("/v1/models/{name:path}")
    async def model(name: str) -> ModelCard:
        return get_model(state, name)

    @router.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        llm = state.llm
        if llm.stopped:
            failure = llm.failure
            error = (
                "the engine is closed"
                if failure is None
                else f"the engine loop stopped: {type(failure).__name__}: {failure}"
            )
            return JSONResponse({"status": "error", "error": error}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return router


async def _guarded(request: Request, work: Any) -> Response:
    """Run a handler; answer a client that left with 499 (nobody reads it; the log and the
    metrics do)."""
    try:
        return await work
    except ClientDisconnected:
        return Response(status_code=499)


class _EdgeMiddleware:
    """Before any route: count the request for /metrics, check the headers' size (431), the Host
    header (400), the API key (401), read the body (413 past `max_body_bytes`, 408 when it does not finish within
    `body_timeout_s`) and refuse a lone UTF-16 surrogate in it (400). After the route: an
    exception that escaped every handler is answered here (500, or 400 for input nested too
    deeply) and never reaches the HTTP server, so the connection stays usable. A plain ASGI
    middleware, not `BaseHTTPMiddleware`, so streaming responses and disconnect notices pass
    straight through.

    The body is read here, then replayed to the app; after it, `receive` is the server's own, so
    the app still hears `http.disconnect`. `/health` and `/metrics` skip the Host and key checks
    (probes and scrapers reach them by address)."""

    def __init__(
        self, app: ASGIApp, api_key: str, limits: ServerLimits, hosts: HostAllowList, state: ServerState
    ) -> None:
        self.app = app
        self.api_key = api_key.encode()
        self.limits = limits
        self.hosts = hosts
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def counting_send(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start" and not started:
                started = True
                route = scope.get("route")
                path = getattr(route, "path", None) or "other"
                self.state.metrics.http_requests.labels(path, str(message["status"])).inc()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            refused = await self._refusal(scope)
            if refused is not None:
                await _send_error(counting_send, *refused)
                return
            if scope["method"] in _BODY_METHODS:
                body = await self._read_body(scope, receive)
                if isinstance(body, Exception):
                    # A body not read to its end leaves the connection unusable: close it.
                    unread = isinstance(body, RequestTooLargeError | RequestTimeoutError)
                    await _send_error(counting_send, body, {"connection": "close"} if unread else None)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, counting_send)
        except Exception as exc:  # noqa: BLE001 - answered here, never re-raised to uvicorn
            typed = error_of_unexpected(exc)
            if typed is None:
                logger.error("unexpected error on %s", scope["path"], exc_info=exc)
            if not started:
                await _send_error(counting_send, typed or exc)
            elif not finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _refusal(self, scope: Scope) -> tuple[Exception, dict[str, str]] | None:
        """The error a request is refused with before its body is read, or None."""
        path: str = scope["path"]
        size = sum(len(k) + len(v) for k, v in scope["headers"])
        if size > self.limits.max_header_bytes:
            return (
                HeadersTooLargeError(
                    f"the request headers hold {size:,} bytes, more than this server reads "
                    f"({self.limits.max_header_bytes:,}): send smaller headers, or raise --max-header-bytes / "
                    "JAMBA_STACK_MAX_HEADER_BYTES"
                ),
                {"connection": "close"},
            )
        if path in _OPEN_PATHS:
            return None
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        try:
            self.hosts.check(host)
        except InvalidHostError as exc:
            return exc, {}
        if self.api_key and path.startswith(_PROTECTED_PREFIXES) and not self._authorized(scope):
            exc = AuthenticationError(
                "missing or wrong API key: send the server's key as 'Authorization: Bearer KEY' "
                "(the server reads it from JAMBA_STACK_API_KEY)"
            )
            return exc, {"www-authenticate": "Bearer"}
        return None

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.api_key)
        return False

    async def _read_body(self, scope: Scope, receive: Receive) -> list[Message] | Exception:
        """The body's messages, or the error to answer with: too large (by header or by count),
        not finished in time, or holding a lone surrogate."""
        limit = self.limits.max_body_bytes
        too_large = RequestTooLargeError(
            f"the request body is larger than {limit:,} bytes: send less, or raise the server's limit "
            "(--max-body-bytes / JAMBA_STACK_MAX_BODY_BYTES)"
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return too_large
        messages: list[Message] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request":
                        return messages  # disconnected: let the app see it
                    size += len(message.get("body", b""))
                    if size > limit:
                        return too_large
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return RequestTimeoutError(
                f"the request body did not finish arriving within {self.limits.body_timeout_s:g} s: send it "
                "whole, or raise --body-timeout-s / JAMBA_STACK_BODY_TIMEOUT_S"
            )
        where = lone_surrogate(b"".join(m.get("body", b"") for m in messages)) if size else None
        if where is not None:
            return InvalidParameterError(
                f"{where} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), which is "
                "not text: send valid Unicode (a character outside the BMP is a pair of escapes)",
                where,
            )
        return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _send_error(send: Send, exc: Exception, headers: dict[str, str] | None = None) -> None:
    status, body = error_of(exc)
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    every = {**(error_headers(exc) or {}), **(headers or {})}
    raw += [(k.lower().encode(), v.encode()) for k, v in every.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def serve(
    llm: AsyncLLM,
    settings: Settings,
    model_names: Sequence[str] | None = None,
    log_level: str = "info",
) -> None:
    """Serve `llm` on `settings.host:settings.port` until interrupted, then shut the engine down.

    If the engine loop dies, the server does not live on half dead: `/health` says 503 at once,
    the server stops, and this raises `EngineStoppedError` (the CLI exits 1), so a supervisor
    (compose's restart policy, systemd, `jamba-stack up`) starts a fresh one."""
    import uvicorn

    app = create_app(settings, llm=llm, model_names=model_names)
    logger.info("serving %s on http://%s:%d", app.state.server.model_names, settings.host, settings.port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            timeout_graceful_shutdown=5,
            # h11, not httptools: h11 bounds the request head it buffers (httptools takes any size).
            http="h11",
            h11_max_incomplete_event_size=settings.max_header_bytes,
        )
    )

    def stop_when_engine_dies() -> None:
        llm.wait_stopped()
        if llm.failure is not None:
            logger.critical("the engine loop stopped (%s): shutting the server down", llm.failure)
            server.should_exit = True

    threading.Thread(target=stop_when_engine_dies, name="engine-watch", daemon=True).start()
    try:
        server.run()
    finally:
        llm.shutdown()
    if llm.failure is not None:
        failure = llm.failure
        raise EngineStoppedError(
            f"the engine loop stopped after an error ({type(failure).__name__}: {failure}); the server exited "
            "so that its supervisor can restart it: see the log above for the traceback"
        ) from failure
