"""What one request may ask of the server, and who may ask: the limits (`ServerLimits`, from the
settings), the queue of requests waiting for their first token (`RequestQueue`, 429 when full),
the Host allow-list, and the checks of a request body that run before any parsing or tokenizing.

Every limit is a setting (`JAMBA_STACK_*`) and a flag of `jamba-stack serve`; a request past one
is refused with a message that names the limit and the flag that raises it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.server.errors import InvalidHostError, QueueFullError
from jamba_stack.app.settings import Settings

# Names a loopback client reaches the server by; a DNS-rebinding page sends its own name instead.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARD_BINDS = {"", "0.0.0.0", "::", "[::]"}
# Seconds a client told "queue full" should wait before it retries.
RETRY_AFTER_S = 1


class RequestLimitError(JambaStackError):
    """A request asks for more than a server limit allows (sequences, tokens, documents, tools).
    `param` names the request field."""

    http_status = 400
    code = "limit_exceeded"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ServerLimits:
    """The limits the server enforces on each request (see `Settings` for each one's meaning)."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_seqs_per_request: int = 64
    max_queued_requests: int = 256
    default_max_tokens: int = 4096
    max_tokens_limit: int = 32768
    max_documents: int = 256
    max_tools: int = 128
    max_header_bytes: int = 64 * 1024
    body_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def check_sequences(self, count: int, param: str, what: str) -> None:
        """Raise `RequestLimitError` when a request asks for more than `max_seqs_per_request`."""
        if count > self.max_seqs_per_request:
            raise RequestLimitError(
                f"{what} ask for {count:,} sequences; this server runs at most {self.max_seqs_per_request:,} "
                "per request: send fewer (or several requests), or raise --max-seqs-per-request / "
                "JAMBA_STACK_MAX_SEQS_PER_REQUEST",
                param,
            )

    def check_count(self, count: int, limit_name: str, param: str) -> None:
        """Raise `RequestLimitError` when `count` items of `param` pass `limit_name` (max_documents,
        max_tools)."""
        limit = getattr(self, limit_name)
        if count > limit:
            raise RequestLimitError(
                f"{param} has {count:,} items; this server takes at most {limit:,}: send fewer, or raise "
                f"--{limit_name.replace('_', '-')} / JAMBA_STACK_{limit_name.upper()}",
                param,
            )

    def check_max_tokens(self, max_tokens: int | None, param: str = "max_tokens") -> None:
        """Raise `RequestLimitError` when a request asks for more than `max_tokens_limit` tokens."""
        if max_tokens is not None and max_tokens > self.max_tokens_limit:
            raise RequestLimitError(
                f"{param}={max_tokens:,} passes this server's limit of {self.max_tokens_limit:,} tokens per "
                "answer: ask for fewer, or raise --max-tokens-limit / JAMBA_STACK_MAX_TOKENS_LIMIT",
                param,
            )


class QueueTicket:
    """One admitted request's place in the queue: it leaves the queue at its first token
    (`started`) or when it ends (`release`), whichever comes first; both are idempotent."""

    def __init__(self, queue: RequestQueue) -> None:
        self._queue: RequestQueue | None = queue

    def started(self) -> None:
        if self._queue is not None:
            self._queue.waiting -= 1
            self._queue = None

    release = started


class RequestQueue:
    """Requests admitted and still waiting for their first token. Used from the event loop only
    (no lock): `admit` raises `QueueFullError` (429, `Retry-After`) when `max_queued` wait already."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.waiting = 0

    def admit(self) -> QueueTicket:
        if self.waiting >= self.max_queued:
            raise QueueFullError(
                f"the server already has {self.waiting:,} requests waiting for their first token (its limit): "
                f"retry in {RETRY_AFTER_S} s, or raise --max-queued-requests / JAMBA_STACK_MAX_QUEUED_REQUESTS",
                RETRY_AFTER_S,
            )
        self.waiting += 1
        return QueueTicket(self)


# ---- hosts ---------------------------------------------------------------------------------------
class HostAllowList:
    """The Host header values the API answers: the loopback names, the address the server is bound
    to (unless a wildcard), and `extra` (`example.com`, `*.example.com` for its subdomains, `*`
    for any). Ports are ignored; names compare case-insensitively."""

    def __init__(self, extra: Iterable[str] = (), bound_host: str = "") -> None:
        names = {*LOOPBACK_HOSTS}
        if bound_host.strip().lower() not in _WILDCARD_BINDS:
            names.add(_strip_brackets(bound_host.strip().lower()))
        self.any = False
        self.suffixes: list[str] = []
        for item in extra:
            item = item.strip().lower().rstrip(".")
            if not item:
                continue
            if item == "*":
                self.any = True
            elif item.startswith("*."):
                self.suffixes.append(item[1:])
            else:
                names.add(_strip_brackets(item))
        self.names = frozenset(names)

    @classmethod
    def from_settings(cls, settings: Settings) -> HostAllowList:
        return cls(settings.allowed_hosts.split(","), settings.host)

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        if not host_header:
            return False
        host = host_name(host_header)
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def check(self, host_header: str | None) -> None:
        """Raise `InvalidHostError` unless `host_header` is allowed."""
        if not self.allows(host_header):
            raise InvalidHostError(
                f"the Host header {host_header!r} is not one this server answers to (it answers "
                f"{sorted(self.names)}): reach it by one of those names, or add the name to "
                "--allowed-hosts / JAMBA_STACK_ALLOWED_HOSTS"
            )


def host_name(host_header: str) -> str:
    """The host part of a Host header: `[::1]:8000` -> `::1`, `Example.com.:80` -> `example.com`."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


# ---- body ----------------------------------------------------------------------------------------
# A JSON escape of a UTF-16 surrogate. Raw UTF-8 cannot hold one (those bytes are not valid
# UTF-8), so an escape is the only way one reaches a string; the precise check runs only then.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(body: bytes) -> str | None:
    """Where the JSON `body` holds a lone UTF-16 surrogate (a `\\ud800` escape with no partner;
    a pair is one character and fine), as a parameter path (`messages[0].content`); None when it
    holds none or is not JSON (the parser answers that)."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return f"{path}.{key!r}" if path else repr(key)
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return None
