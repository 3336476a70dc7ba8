"""Checkpoint loading: a local directory or a hub id -> `JambaForCausalLM` with its weights.

Weights are read tensor by tensor from memory-mapped safetensors files straight into a model built
on the meta device, so a checkpoint is never held twice in RAM. Every problem with the files is a
`CheckpointError` that names the file or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from jamba_runtime.config import JambaConfig
from jamba_runtime.errors import CheckpointError, InvalidRequestError, ModelNotFoundError
from jamba_runtime.model.dummy_weights import init_dummy_weights
from jamba_runtime.model.expert_layout import stack_experts
from jamba_runtime.model.modeling import JambaForCausalLM, empty_model
from jamba_runtime.model.quantization import prepare_experts_int8, quantize_int8, resolve_quantization
from jamba_runtime.model.sharding import shard_tensor
from jamba_runtime.model.tp_layers import TensorParallelGroup
from jamba_runtime.model.tp_model import shard_model

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
LOAD_FORMATS = ("auto", "dummy")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# What a hub download needs; everything else in a repo (pytorch .bin files, READMEs) is skipped.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"float32" | "bfloat16" | "float16"` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise InvalidRequestError(f"dtype {dtype} is not supported: use float32, bfloat16 or float16")
    if dtype not in _DTYPES:
        raise InvalidRequestError(f"dtype {dtype!r} is not supported: use float32, bfloat16 or float16")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(
            f"device {device!r} asked for, but no CUDA device is available: use device='cpu'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise InvalidRequestError(f"device {device!r} is not supported: use 'cpu' or 'cuda'")
    return dev


def resolve_model_path(model: str | Path, local_files_only: bool = False) -> Path:
    """A local checkpoint directory as is; otherwise treat `model` as a hub id and download it.

    Raises `ModelNotFoundError` when the directory does not exist and the hub cannot supply it.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model path {path} is a file; pass the checkpoint directory that holds it"
            )
        return path
    text = str(model)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelNotFoundError(
            f"model directory {path} does not exist: check the path, or make one with "
            "`jamba-stack model make-tiny DIR`"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS, local_files_only=local_files_only))
    except LocalEntryNotFoundError as e:
        raise ModelNotFoundError(
            f"model {text!r} is not a local directory and the hub cannot be reached (offline mode, or no "
            f"network), nor is it in the local hub cache: download it on a connected machine and pass its "
            f"directory ({e.__class__.__name__})"
        ) from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelNotFoundError(f"model {text!r} could not be fetched from the hub: {e}") from e


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one `model.safetensors`, or the shards of its index."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}"
            ) from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{index} lists shards that are missing from {directory}: {', '.join(missing)}"
            )
        return files
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(
        f"no weights in {directory}: expected {SINGLE_FILE}, or shards model-0000x-of-0000y.safetensors "
        f"with {INDEX_FILE}"
    )


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool = False,
    quantization: str | None = None,
    tp: TensorParallelGroup | None = None,
    load_format: str = "auto",
) -> JambaForCausalLM:
    """Load a Jamba checkpoint.

    Args:
        path: a checkpoint directory (config.json + safetensors), or a hub id such as
            "ai21labs/AI21-Jamba-Mini-1.7" when the hub is reachable.
        device: "cpu" or "cuda" (or "cuda:N"). dtype: "float32", "bfloat16" or "float16".
        quantization: None, or "experts_int8": the MoE expert weights are quantized to int8 with
            per-output-channel scales as they are read (each on `device`), or taken as they are
            when the checkpoint already holds them in int8 with their `.weight_scale` tensors.
        tp: this process's tensor-parallel group: only rank `tp.rank`'s shard of each tensor is
            kept (and only its own experts are read), with the collectives in place
            (`tp_model.shard_model`). None: the whole model.
        load_format: "auto" (the safetensors files), or "dummy": random weights from config.json
            alone, for measuring a shape's speed and memory without its checkpoint
            (`dummy_weights.py`; int8 experts are made directly as int8).

    Returns:
        The model in eval mode. `model(input_ids)` gives logits `(batch, seq, vocab)`.

    Raises:
        ModelNotFoundError, ConfigError, CheckpointError, InvalidRequestError.

    Example:
        >>> model = load_model("models/tiny", dtype="float32")
        >>> model(torch.tensor([[1, 5, 9]])).shape
        torch.Size([1, 3, 1024])
    """
    torch_dtype = resolve_dtype(dtype)
    quant = resolve_quantization(quantization)
    dev = resolve_device(device)
    if load_format not in LOAD_FORMATS:
        raise InvalidRequestError(
            f"load_format={load_format!r} is not supported: use one of {list(LOAD_FORMATS)}"
        )
    directory = resolve_model_path(path, local_files_only=local_files_only)
    config = JambaConfig.from_file(directory)
    model = empty_model(config)
    quantized = set(prepare_experts_int8(model)) if quant is not None else set()
    if tp is not None and tp.world_size > 1:
        shard_model(model, tp)  # on the meta device: the shard's shapes, before any weight is read
    if load_format == "dummy":
        init_dummy_weights(model, config, dev, torch_dtype, tp=tp)
        stack_experts(model, float_experts=dev.type == "cuda")
        return model.eval()
    files = checkpoint_files(directory)
    expected = {name: p for name, p in model.named_parameters()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    loaded: set[str] = set()
    unexpected: list[str] = []
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"cannot read {file}: {e}; the file is truncated or corrupt, download it again"
            ) from e
        with handle:
            for name in handle.keys():
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # some exporters write the tied head anyway; the embedding is the source
                got = tuple(handle.get_slice(name).get_shape())
                if tp is not None and tp.world_size > 1:
                    local = _shard(name, torch.empty(got, device="meta"), tp, config)
                    if local is None:
                        continue  # another rank's expert
                    got = tuple(local.shape)
                if name not in expected:
                    unexpected.append(name)
                    continue
                want = tuple(expected[name].shape)
                if got != want:
                    raise CheckpointError(
                        f"tensor {name!r} in {file.name} has shape {list(got)} but the config "
                        f"(config.json) needs {list(want)}: the weights and config.json do not match"
                    )
                try:
                    tensor = handle.get_tensor(name)
                except (SafetensorError, OSError, RuntimeError) as e:
                    raise CheckpointError(f"cannot read tensor {name!r} from {file}: {e}") from e
                if tp is not None and tp.world_size > 1:
                    tensor = _shard(name, tensor, tp, config)
                    assert tensor is not None
                if name in quantized and tensor.is_floating_point():
                    # Quantized on the target device: a GPU does it in a blink, one tensor at a time.
                    q, scale = quantize_int8(tensor.to(device=dev))
                    _assign(model, name, q)
                    _assign(model, name + "_scale", scale)
                    loaded.update((name, name + "_scale"))
                    continue
                if tensor.dtype == torch.int8 and name not in quantized:
                    raise CheckpointError(
                        f"tensor {name!r} in {file.name} is int8 (a quantized checkpoint): load it with "
                        "quantization='experts_int8'"
                    )
                # Pre-quantized experts keep their int8 weights and float32 scales as stored.
                keep = name.removesuffix("_scale") in quantized
                target = tensor.dtype if keep else _param_dtype(name, torch_dtype)
                _assign(model, name, tensor.to(device=dev, dtype=target))
                loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(
            f"checkpoint {directory} lacks {len(missing)} tensors the config needs: {shown}"
        )
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:8])
        raise CheckpointError(
            f"checkpoint {directory} has {len(unexpected)} tensors this Jamba config does not use: {shown}; "
            "check that config.json belongs to these weights"
        )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # The layout the grouped MoE kernels read, one layer at a time (float ones only where they run).
    stack_experts(model, float_experts=dev.type == "cuda")
    return model.eval()


def _shard(
    name: str, tensor: torch.Tensor, tp: TensorParallelGroup, config: JambaConfig
) -> torch.Tensor | None:
    return shard_tensor(name, tensor, tp.rank, tp.world_size, config.num_experts)


def param_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the loader gives parameter `name` of a model loaded in `dtype`."""
    return _param_dtype(name, dtype)


def _param_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    # A_log and D feed exp() and the skip in float32 inside the scan; keeping them float32 costs
    # d_inner * (d_state + 1) values per layer and avoids bf16 error in A.
    if name.endswith(("mamba.A_log", "mamba.D")):
        return torch.float32
    return dtype


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))
