"""Every error leaves the server as an OpenAI error body, `{"error": {"message", "type", "param",
"code"}}`, with the status of the typed error that caused it (`JambaStackError.http_status`).

Mapping: typed runtime errors keep their status and code (a too-long prompt is 400
`context_length_exceeded`); request validation (FastAPI's 422) is 400; a body that is not JSON
(malformed, not UTF-8, nested past what the parser takes) is 400 `invalid_json`; a wrong API key
401; an unknown route 404; a body that does not finish arriving 408; an oversized body 413;
oversized headers 431 (past one network read, the HTTP server itself answers 400); a full queue 429 with `Retry-After`; input nested too deeply anywhere else 400; anything unexpected 500
with a generic message (the traceback goes to the log, not the client).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jamba_runtime.errors import InvalidRequestError, JambaStackError

logger = logging.getLogger("jamba_stack.server")

# pydantic's names for the branches of a union, which it puts in an error's location
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


class AuthenticationError(JambaStackError):
    """The request's bearer token is missing or is not the server's API key."""

    http_status = 401
    code = "invalid_api_key"


class RequestTooLargeError(JambaStackError):
    """The request body is larger than the server accepts (`max_body_bytes`)."""

    http_status = 413
    code = "request_too_large"


class RequestTimeoutError(JambaStackError):
    """The request body did not finish arriving within the server's `body_timeout_s`."""

    http_status = 408
    code = "request_timeout"


class HeadersTooLargeError(JambaStackError):
    """The request's headers are larger than the server reads (`max_header_bytes`)."""

    http_status = 431
    code = "request_header_fields_too_large"


class InvalidHostError(JambaStackError):
    """The request's Host header is not one the server answers to (`allowed_hosts`)."""

    http_status = 400
    code = "invalid_host"


class InvalidJsonError(JambaStackError):
    """The request body is not JSON the server can read (malformed, not UTF-8, nested too deeply)."""

    http_status = 400
    code = "invalid_json"


class QueueFullError(JambaStackError):
    """The server already holds as many waiting requests as it may (`max_queued_requests`).
    `headers` carries `Retry-After` (seconds)."""

    http_status = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class UnsupportedParameterError(JambaStackError):
    """A parameter that would change the output and that this server cannot honour."""

    http_status = 400
    code = "unsupported_parameter"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_type(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_of(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The (status, body) an exception is answered with."""
    if isinstance(exc, JambaStackError):
        status = exc.http_status
        message = str(exc) if status < 500 or status == 503 else "internal error: see the server log"
        return status, error_body(status, message, exc.code, getattr(exc, "param", None))
    return 500, error_body(500, "internal error: see the server log", "internal_error")


def error_of_unexpected(exc: BaseException) -> JambaStackError | None:
    """The user-caused error an untyped exception stands for, or None for a server fault: input
    nested so deeply that something recursing over it ran out of stack is the request's fault."""
    if isinstance(exc, RecursionError):
        return InvalidRequestError(
            "the request is nested too deeply to process (a schema, tool parameters, document "
            "metadata or tool-call arguments): flatten it"
        )
    return None


def error_headers(exc: BaseException) -> dict[str, str] | None:
    """Headers an error is answered with (`Retry-After` of a 429), if any."""
    return getattr(exc, "headers", None) if isinstance(exc, JambaStackError) else None


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    status, body = error_of(exc)
    return JSONResponse(body, status_code=status, headers=headers or error_headers(exc))


def sse_error(exc: BaseException) -> str:
    """An error as an SSE event, for errors after a stream has started (its status is already 200)."""
    return f"data: {json.dumps(error_of(exc)[1])}\n\n"


def _param(loc: tuple[Any, ...]) -> str | None:
    parts: list[str] = []
    for item in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _UNION_TAGS or not str(item).isidentifier():
            break
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or None


def validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        message = f"the request body is not valid JSON ({detail}): send a JSON object"
        return JSONResponse(error_body(400, message, "invalid_json"), status_code=400)
    first = errors[0] if errors else {}
    param = _param(tuple(first.get("loc", ())))
    seen: list[str] = []
    for e in errors:
        where = _param(tuple(e.get("loc", ()))) or "body"
        text = f"{where}: {e.get('msg', 'invalid value')}"
        if text not in seen:
            seen.append(text)
    message = "; ".join(seen[:3]) or "invalid request"
    return JSONResponse(error_body(400, message, "invalid_value", param), status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error with an OpenAI error body."""

    @app.exception_handler(JambaStackError)
    async def _typed(request: Request, exc: JambaStackError) -> JSONResponse:
        if exc.http_status >= 500:
            logger.error("request failed: %s", exc, exc_info=exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            return error_response(unreadable)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        typed = error_of_unexpected(exc)
        if typed is not None:
            return error_response(typed)
        logger.exception("unexpected error on %s", request.url.path, exc_info=exc)
        return error_response(exc)


def _unreadable_body(exc: StarletteHTTPException) -> InvalidJsonError | None:
    """FastAPI answers a body `json.loads` fails on with anything but a syntax error (bytes that
    are not UTF-8, nesting past the parser's recursion limit) with a bare 400 whose cause is the
    real error: name it, with the code `invalid_json`."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return InvalidJsonError(
            f"the request body is not UTF-8 ({cause.reason} at byte {cause.start}): send JSON encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return InvalidJsonError(
            "the request body is nested too deeply to parse (about 1,000 levels of arrays and "
            "objects at most): flatten it"
        )
    return InvalidJsonError(
        f"the request body could not be read as JSON ({type(cause).__name__}): send a JSON object"
    )
