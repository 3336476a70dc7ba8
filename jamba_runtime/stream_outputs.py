"""What `AsyncLLM` hands out: each step's delta of a request, its token usage, and the whole
output of a finished request. Kept apart from the loop so the server can import the types alone."""

from __future__ import annotations

from dataclasses import dataclass

from jamba_runtime.sequence import RequestOutput


@dataclass(frozen=True)
class Usage:
    """Token counts of one request, as in OpenAI's `usage`. `completion_tokens` counts every
    generated token, an end token that stopped it included."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestOutputDelta:
    """What one engine step added to one request.

    Attributes:
        request_id: the request's id. text: new text (stop strings held back until ruled out).
        token_ids: new token ids. finished: True on the last item only. finish_reason: "stop",
            "length" or "abort" on the last item, else None. usage: on the last item only.
        logprobs: per new token `{"token_id", "logprob", "top"}`, when the params asked for them.
    """

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    usage: Usage | None = None
    logprobs: list[dict] | None = None


@dataclass
class GenerateOutput(RequestOutput):
    """`RequestOutput` of a whole request, with its `usage` and (when asked) its `logprobs`."""

    usage: Usage | None = None
    logprobs: list[dict] | None = None
