"""Typed errors a user can hit. Each carries an HTTP status and a code so the server can map
it to an OpenAI-style error body; each message names the bad value and what to do."""

from __future__ import annotations


class JambaStackError(Exception):
    """Base of every error a user of jamba-stack can hit."""

    http_status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(JambaStackError):
    """A `config.json` is missing a field, has a wrong type, or an impossible value."""

    http_status = 400
    code = "invalid_config"


class ModelNotFoundError(JambaStackError):
    """A model path or hub id does not exist, or cannot be reached."""

    http_status = 404
    code = "model_not_found"


class CheckpointError(JambaStackError):
    """Weights on disk do not match the config, are missing, or are corrupt."""

    http_status = 400
    code = "invalid_checkpoint"


class TokenizerError(JambaStackError):
    """The tokenizer files or chat template are missing or cannot be used."""

    http_status = 400
    code = "invalid_tokenizer"


class ContextLengthError(JambaStackError):
    """A prompt (plus the tokens asked for) does not fit the model's context."""

    http_status = 400
    code = "context_length_exceeded"


class InvalidRequestError(JambaStackError):
    """A request parameter has a value the runtime cannot use (e.g. temperature < 0)."""

    http_status = 400
    code = "invalid_request"


class RequestNotFoundError(JambaStackError):
    """A request id that is not running (unknown, or already finished)."""

    http_status = 404
    code = "request_not_found"


class EngineStoppedError(JambaStackError):
    """The engine loop no longer runs: the `AsyncLLM` was closed, or a step raised (that exception
    is this one's `__cause__`). Make a new `AsyncLLM`."""

    http_status = 503
    code = "engine_stopped"


class RequestFailedError(JambaStackError):
    """One request failed inside the engine (its sampling, structured-output grammar or
    detokenizing raised, or its next-token distribution was unusable). That request alone ended,
    its cache freed; the engine goes on serving the others. The server log has the traceback."""

    http_status = 500
    code = "request_failed"


class InsufficientMemoryError(JambaStackError):
    """A model, dtype, context and GPU count that cannot fit the GPUs' memory. The message names the
    shortfall and the settings that would fit (quantization, more GPUs, a shorter context)."""

    http_status = 400
    code = "insufficient_memory"
