"""jamba_runtime: a Jamba inference runtime.

Public API (stable):
    load_model(path, device="cpu", dtype="float32") -> JambaForCausalLM  # model(input_ids) -> logits
    LLM(model=path, device=..., dtype=..., quantization=None | "experts_int8")  # .generate / .stream / .chat / .save_prefix
    AsyncLLM(model=path)  # .add_request -> async stream, .abort, .metrics
    SamplingParams(...)
"""

from jamba_runtime.async_llm import AsyncLLM
from jamba_runtime.config import JambaConfig
from jamba_runtime.engine import EngineConfig, LLMEngine
from jamba_runtime.errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    EngineStoppedError,
    InsufficientMemoryError,
    InvalidRequestError,
    JambaStackError,
    ModelNotFoundError,
    RequestNotFoundError,
    TokenizerError,
)
from jamba_runtime.llm import LLM
from jamba_runtime.loader import load_model
from jamba_runtime.model import JambaForCausalLM
from jamba_runtime.sampling_params import SamplingParams
from jamba_runtime.sequence import RequestOutput

__all__ = [
    "LLM",
    "AsyncLLM",
    "EngineConfig",
    "EngineStoppedError",
    "InsufficientMemoryError",
    "LLMEngine",
    "RequestNotFoundError",
    "CheckpointError",
    "ConfigError",
    "ContextLengthError",
    "InvalidRequestError",
    "JambaConfig",
    "JambaForCausalLM",
    "JambaStackError",
    "ModelNotFoundError",
    "RequestOutput",
    "SamplingParams",
    "TokenizerError",
    "load_model",
]
