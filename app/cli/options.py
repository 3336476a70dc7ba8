"""What every command shares: the common options, settings from flags + env + `.env`, the one
way a command opens its model, and the one way a typed error ends a command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.settings import Settings, load_settings
from jamba_stack.chat import ChatModel, chat_model, resolve_model_path

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the stack keeps its files [env: JAMBA_STACK_DATA_DIR]."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Checkpoint directory or hub id [env: JAMBA_STACK_MODEL]; default: the tiny model.",
    ),
]
ChatModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Checkpoint directory, hub id or server URL (http://HOST:PORT) [env: JAMBA_STACK_MODEL]; "
        "default: the embedded tiny model.",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda [env: JAMBA_STACK_DEVICE].")]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32, bfloat16 or float16 [env: JAMBA_STACK_DTYPE].")
]
ChromaUrl = Annotated[
    str | None,
    typer.Option(
        "--chroma-url", help="Chroma server URL; empty: the embedded store [env: JAMBA_STACK_CHROMA_URL]."
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="Bearer key of a server --model [env: JAMBA_STACK_API_KEY]."),
]
ServedModel = Annotated[
    str | None,
    typer.Option("--served-model", help="Model name to ask a server --model for (default: its first)."),
]
Collection = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
EmbedderOpt = Annotated[
    str,
    typer.Option(
        "--embedder",
        help="minilm (int8 ONNX all-MiniLM-L6-v2, default), minilm-fp32, minilm-onnx, minilm-cuda (float16 "
        "on the GPU), st:/path, st-cuda:/path, onnx:/path, onnx-int8:/path or openai:MODEL@URL. Must "
        "match the collection's model.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class InvalidOptionError(JambaStackError):
    """A command-line option whose value parses but cannot be used (a negative size, an absolute
    glob, ...)."""

    http_status = 400
    code = "invalid_option"


def fail(e: Exception) -> NoReturn:
    """End the command: one line naming the problem, exit status 2."""
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def note(message: str) -> None:
    typer.echo(message, err=True)


def settings(**flags: object) -> Settings:
    """Settings from env and `.env`, with the flags that were given (not None) on top."""
    return load_settings(**flags)


def model_path(s: Settings) -> str:
    """The configured checkpoint, or the tiny model in the data dir (made on first use, with a note)."""
    return resolve_model_path(s.model, s.tiny_model_dir, note)


def open_chat_model(s: Settings, api_key: str | None = None, served_model: str | None = None) -> ChatModel:
    """The configured model as a `ChatModel`: a server URL, a checkpoint loaded in-process on
    `s.device` / `s.dtype`, or the tiny model (made on first use, with a note)."""
    return chat_model(
        s.model or None,
        api_key=api_key or s.api_key or None,
        model_name=served_model,
        tiny_dir=s.tiny_model_dir,
        device=s.device,
        dtype=s.dtype,
        notice=note,
    )
