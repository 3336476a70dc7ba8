"""jamba_runtime: a Jamba inference runtime.

Public API (stable; import it from here):
    load_model(path, device="cpu", dtype="float32") -> JambaForCausalLM  # model(input_ids) -> logits
    LLM(model=path, device=..., dtype=..., quantization=None | "experts_int8")  # .generate / .stream / .chat / .save_prefix
    LLM.from_args(EngineArgs(...)); AsyncLLM(model=path)  # .add_request -> async stream, .abort, .metrics
    SamplingParams(...), StructuredOutput(...), parse_tool_calls(text)
    make_tiny_model(directory)  # the deterministic tiny checkpoint

Layout (each package's `__init__` lists its modules; imports point down only, `.importlinter`):
    llm, async_llm, tiny   the front door
    engine/                the step loop, scheduler, runner, sampler, CUDA graphs, snapshots, outputs
    structured/            grammar-constrained decoding
    tokenizer/, model/     tokenizer + chat template; the model, loader, int8 experts, tensor parallel
    cache/                 paged KV blocks + Mamba state slots
    kernels/               Triton kernels beside their PyTorch references
    config, errors         `JambaConfig`; typed errors
"""

from jamba_runtime.async_llm import AsyncLLM
from jamba_runtime.cache.batch import ForwardBatch
from jamba_runtime.cache.state import HybridCache
from jamba_runtime.config import JambaConfig
from jamba_runtime.engine.config import EngineArgs, EngineConfig
from jamba_runtime.engine.engine import LLMEngine
from jamba_runtime.engine.metrics import EngineMetrics
from jamba_runtime.engine.outputs import GenerateOutput, RequestOutput, RequestOutputDelta, StepOutput, Usage
from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    EngineStoppedError,
    InsufficientMemoryError,
    InvalidRequestError,
    JambaStackError,
    ModelNotFoundError,
    RequestFailedError,
    RequestNotFoundError,
    TokenizerError,
)
from jamba_runtime.llm import LLM
from jamba_runtime.model.loader import load_model
from jamba_runtime.model.modeling import JambaForCausalLM
from jamba_runtime.structured.spec import StructuredOutput
from jamba_runtime.structured.tools import parse_tool_calls
from jamba_runtime.tiny import TINY_CONFIG, make_tiny_model
from jamba_runtime.tokenizer.tokenizer import Tokenizer

__all__ = [
    "LLM",
    "TINY_CONFIG",
    "AsyncLLM",
    "CheckpointError",
    "ConfigError",
    "ContextLengthError",
    "EngineArgs",
    "EngineConfig",
    "EngineMetrics",
    "EngineStoppedError",
    "ForwardBatch",
    "GenerateOutput",
    "HybridCache",
    "InsufficientMemoryError",
    "InvalidRequestError",
    "JambaConfig",
    "JambaForCausalLM",
    "JambaStackError",
    "LLMEngine",
    "ModelNotFoundError",
    "RequestFailedError",
    "RequestNotFoundError",
    "RequestOutput",
    "RequestOutputDelta",
    "SamplingParams",
    "StepOutput",
    "StructuredOutput",
    "Tokenizer",
    "TokenizerError",
    "Usage",
    "load_model",
    "make_tiny_model",
    "parse_tool_calls",
]
