"""Per-request sampling parameters, validated where they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.structured.spec import StructuredOutput

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    Attributes:
        max_tokens: most new tokens to generate.
        temperature: 0 (or anything below 1e-5) picks the most likely token (greedy); higher
            flattens the distribution.
        top_k: keep the k most likely tokens (0 or -1: all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0: all).
        min_p: drop tokens less likely than min_p times the most likely one (0.0: none).
        repetition_penalty: >1 discourages tokens already in the prompt or output (1.0: off),
            applied as in transformers (positive logits divided, negative multiplied).
        seed: same seed, same output, whatever else runs in the batch.
        stop: strings that end generation; the matched string is not part of the output.
        stop_token_ids: token ids that end generation, besides the model's end-of-sequence ids.
        ignore_eos: keep going past end-of-sequence tokens (benchmarks).
        logprobs: return the log-probability of each chosen token and of the `logprobs` most
            likely tokens (0..20; None: none), from the model's distribution before sampling filters
            (and before a structured-output mask).
        structured: constrain the output to JSON, a JSON Schema, a regex, a choice or tool calls
            (`StructuredOutput`). The grammar decides where the output ends: stop strings and
            stop token ids do not apply inside the constrained part, and `ignore_eos` is refused.

    Every finite value these rules admit is safe to sample with, however extreme (a temperature
    below 1e-5 samples greedily, a top_p of 1e-46 keeps the top token, a repetition penalty of
    1e-39 pushes seen tokens to the top without overflowing); NaN and infinities are refused.

    Example:
        >>> SamplingParams(max_tokens=64, temperature=0.7, top_p=0.9, seed=1, stop=["\\n\\n"])
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: int | None = None
    structured: StructuredOutput | None = None

    def __post_init__(self) -> None:
        # Accept a single string or lists (what users pass) and store tuples (hashable, immutable).
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        self._validate()

    @property
    def greedy(self) -> bool:
        """Pick the most likely token: temperature 0, or below `GREEDY_TEMPERATURE` (as vLLM),
        where dividing by it would underflow in float32 and the distribution is the argmax."""
        return self.temperature < GREEDY_TEMPERATURE

    def _validate(self) -> None:
        def bad(name: str, value: object, rule: str) -> InvalidRequestError:
            return InvalidRequestError(f"{name}={value!r} is invalid: {rule}")

        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise bad("max_tokens", self.max_tokens, "it must be an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise bad("temperature", self.temperature, "it must be a finite number >= 0 (0 means greedy)")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise bad("top_k", self.top_k, "it must be an integer >= 1, or 0 / -1 to disable")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", self.top_p, "it must be in (0, 1]")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", self.min_p, "it must be in [0, 1]")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad(
                "repetition_penalty",
                self.repetition_penalty,
                "it must be a finite number > 0 (1.0 disables it)",
            )
        if self.seed is not None and (not _is_int(self.seed) or not _INT64_MIN <= self.seed <= _INT64_MAX):
            raise bad(
                "seed", self.seed, f"it must be an integer in {_INT64_MIN}..{_INT64_MAX} (int64), or None"
            )
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", self.stop, "it must be non-empty strings")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", self.stop_token_ids, "it must be non-negative integers")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= 20):
            raise bad("logprobs", self.logprobs, "it must be an integer in 0..20, or None")
        if not isinstance(self.ignore_eos, bool):
            raise bad("ignore_eos", self.ignore_eos, "it must be true or false")
        if self.structured is not None:
            if not isinstance(self.structured, StructuredOutput):
                raise bad("structured", self.structured, "it must be a StructuredOutput or None")
            if self.ignore_eos:
                raise bad(
                    "ignore_eos",
                    self.ignore_eos,
                    "it cannot be combined with structured output (the grammar decides where it ends)",
                )


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    """A finite int or float that a float holds (NaN, infinities and larger ints cannot be
    sampled with)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False
