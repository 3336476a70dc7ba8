"""The one model factory: a server URL gives `RemoteChatModel`, a checkpoint path (or an `LLM`)
`LocalChatModel`, and nothing the tiny random-weight test model, made on first use in the given
folder with one notice.

    >>> chat_model("http://127.0.0.1:8000", api_key="key")
    >>> chat_model("/models/jamba-mini", device="cuda", dtype="bfloat16")
    >>> chat_model(None, tiny_dir=Path("data/models/tiny"))   # the test model, with a notice
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from jamba_runtime.errors import ModelNotFoundError
from jamba_runtime.llm import LLM
from jamba_stack.chat.local import LocalChatModel
from jamba_stack.chat.model import ChatModel
from jamba_stack.chat.remote import RemoteChatModel

TINY_SERVED_NAME = "jamba-tiny"
"""The name `jamba-stack serve` answers to when it serves the tiny model (no --model given)."""

RANDOM_WEIGHTS_NOTE = (
    "note: no model configured, so the tiny Jamba with random weights answers; its text is gibberish. "
    "Pass --model DIR (or set JAMBA_STACK_MODEL) to run a real checkpoint."
)

_SHARED: dict[tuple[str, str, str], LocalChatModel] = {}
_SHARED_LOCK = threading.Lock()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def resolve_model_path(
    model: str | Path | None, tiny_dir: Path | None, notice: Callable[[str], None] | None = _stderr
) -> str:
    """The configured model, or (when `model` is empty) the tiny model in `tiny_dir`, written
    there on first use; `notice` gets `RANDOM_WEIGHTS_NOTE` then (None: say nothing).
    Raises `ModelNotFoundError` when neither is given."""
    if model:
        return str(model)
    if tiny_dir is None:
        raise ModelNotFoundError("no model given: pass a checkpoint path or a server URL (or a tiny_dir)")
    if not (tiny_dir / "model.safetensors").is_file():
        from jamba_runtime.tiny import make_tiny_model

        if notice is not None:
            notice(f"making the tiny random model in {tiny_dir} (first use)...")
        make_tiny_model(tiny_dir)
    if notice is not None:
        notice(RANDOM_WEIGHTS_NOTE)
    return str(tiny_dir)


def chat_model(
    target: str | Path | LLM | None = None,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    tiny_dir: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    timeout: float = 600.0,
    max_retries: int = 2,
    shared: bool = False,
    notice: Callable[[str], None] | None = _stderr,
) -> ChatModel:
    """A `ChatModel` for `target`: an `LLM` (in-process), a server URL ("http(s)://...", with
    `api_key`, `model_name`, `timeout`, `max_retries`), a checkpoint directory or hub id (loaded
    in-process on `device` / `dtype`), or None: the tiny model in `tiny_dir` (see
    `resolve_model_path`).

    `shared`: one in-process model per (path, device, dtype) for the whole process, so that
    every caller given the same path (agents, say) uses one runtime.
    """
    if isinstance(target, LLM):
        return LocalChatModel(target)
    if target is not None and str(target).startswith(("http://", "https://")):
        return RemoteChatModel(
            str(target), api_key=api_key, model=model_name, timeout=timeout, max_retries=max_retries
        )
    path = resolve_model_path(target, tiny_dir, notice)
    if not shared:
        return LocalChatModel(LLM(path, device=device, dtype=dtype), name=path)
    key = (str(Path(path).expanduser().resolve()) if Path(path).exists() else path, device, dtype)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = LocalChatModel(LLM(path, device=device, dtype=dtype), name=path)
        return _SHARED[key]


def is_random_test_model(name_or_path: str | None) -> bool:
    """True for the tiny random Jamba: the name the server gives it, or a checkpoint directory with
    its shape (the config `jamba_runtime.tiny` writes)."""
    if not name_or_path:
        return False
    if name_or_path == TINY_SERVED_NAME:
        return True
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return False
    from jamba_runtime.tiny import TINY_CONFIG

    try:
        raw = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    keys = ("hidden_size", "vocab_size", "num_hidden_layers", "num_experts", "intermediate_size")
    return all(raw.get(k) == TINY_CONFIG[k] for k in keys)
