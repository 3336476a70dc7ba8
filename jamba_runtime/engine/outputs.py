"""What a request gets back: its whole output (`RequestOutput`), one step's news from the engine
(`StepOutput`), and what `AsyncLLM` streams (`RequestOutputDelta`, `Usage`, `GenerateOutput`).
Types only: this module imports nothing of the runtime."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestOutput:
    """What a finished (or streaming) request returns.

    Attributes:
        request_id: the request's id. text: the generated text, stop strings removed.
        token_ids: generated ids (an end-of-sequence or stop token that ended it is included,
            as in vLLM; its text is not). finish_reason: "stop" (end token or stop string),
            "length" (max_tokens or the context limit), "abort", "error" (this request alone
            failed inside the engine: `error` says why), or None while running.
    """

    request_id: str
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None
    error: str | None = None


@dataclass
class StepOutput:
    """One request's news from one engine step."""

    request_id: str
    text: str  # new text (stop strings held back until they can be ruled out)
    token_ids: list[int]  # new token ids
    finished: bool
    finish_reason: str | None
    logprobs: list[dict] | None = None  # per new token: {"token_id", "logprob", "top": [(id, logprob)]}
    error: str | None = None  # with finish_reason "error": why this request alone failed


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
