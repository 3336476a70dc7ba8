"""The `jamba-stack` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.settings import Settings, load_settings

app = typer.Typer(
    help="jamba-stack: a local Jamba runtime with RAG and agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Make and inspect model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")

# Retrieval commands live with retrieval; mounted here so they are `jamba-stack ingest` / `search`.
from jamba_stack.retrieval.cli import ask_cmd, ingest_cmd, search_cmd  # noqa: E402

app.command("ingest", help=ingest_cmd.__doc__)(ingest_cmd)
app.command("search", help=search_cmd.__doc__)(search_cmd)
app.command("ask", help=ask_cmd.__doc__)(ask_cmd)

from jamba_stack.retrieval.raft.cli import raft_app  # noqa: E402

app.add_typer(raft_app, name="raft")

# `up` only manages processes (the API server and `streamlit run ui/app.py`); jamba_stack.ui.launch imports
# no Streamlit and no ui page, so the CLI does not depend on the web app's code.
from jamba_stack.ui.launch import up_cmd  # noqa: E402

app.command("up", help=up_cmd.__doc__)(up_cmd)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the stack keeps its files [env: JAMBA_STACK_DATA_DIR]."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", help="Checkpoint directory or hub id [env: JAMBA_STACK_MODEL]; default: the tiny model."
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda [env: JAMBA_STACK_DEVICE].")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", help="Most new tokens.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 = greedy.")]
TopP = Annotated[float, typer.Option("--top-p")]
TopK = Annotated[int, typer.Option("--top-k", help="0 = off.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Same seed, same output.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")]

RANDOM_WEIGHTS_NOTE = (
    "note: this is the embedded tiny Jamba with random weights; its text is gibberish. "
    "Pass --model DIR (or set JAMBA_STACK_MODEL) to run a real checkpoint."
)


def main() -> None:
    """Console entry point: typed errors print one clear line, no traceback, and exit 2 (a
    problem the user can fix) or 1 (a failure of ours, such as the engine loop dying)."""
    try:
        app()
    except JambaStackError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1 if e.http_status >= 500 else 2)


def _settings(
    data_dir: Path | None, model: str | None = None, device: str | None = None, dtype: str | None = None
) -> Settings:
    return load_settings(data_dir=data_dir, model=model, device=device, dtype=dtype)


def _model_path(settings: Settings) -> str:
    """The configured model, or the tiny model in the data dir (made on first use)."""
    if settings.model:
        return settings.model
    from jamba_runtime.tiny import make_tiny_model

    tiny = settings.tiny_model_dir
    if not (tiny / "model.safetensors").is_file():
        typer.echo(f"making the tiny random model in {tiny} (first use)...", err=True)
        make_tiny_model(tiny)
    typer.echo(RANDOM_WEIGHTS_NOTE, err=True)
    return str(tiny)


def _params(
    max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None, stop: list[str] | None
):  # noqa: ANN202 - SamplingParams, imported lazily
    from jamba_runtime.sampling_params import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(stop or ()),
    )


@model_app.command("make-tiny")
def make_tiny(
    directory: Annotated[Path, typer.Argument(help="Directory to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Weights seed; the same seed writes the same files.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing checkpoint.")] = False,
) -> None:
    """Write a deterministic tiny random Jamba (8 layers: 2 attention, 6 Mamba, MoE on 4) with a
    locally built tokenizer and chat template. For tests and offline runs; its text is gibberish."""
    from jamba_runtime.tiny import make_tiny_model

    if (directory / "model.safetensors").exists() and not force:
        typer.echo(f"error: {directory} already holds a checkpoint; pass --force to overwrite it", err=True)
        raise typer.Exit(2)
    make_tiny_model(directory, seed=seed)
    typer.echo(f"wrote tiny random Jamba to {directory}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to complete.")],
    model: ModelOpt = None,
    data_dir: DataDir = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_tokens: MaxTokens = 64,
    temperature: Temperature = 0.8,
    top_p: TopP = 0.95,
    top_k: TopK = 0,
    seed: Seed = None,
    stop: Stop = None,
) -> None:
    """Stream a completion of PROMPT to stdout."""
    from jamba_runtime.llm import LLM

    settings = _settings(data_dir, model, device, dtype)
    params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
    llm = LLM(model=_model_path(settings), device=settings.device, dtype=settings.dtype)
    for delta in llm.stream(prompt, params):
        typer.echo(delta, nl=False)
    typer.echo()


@app.command()
def chat(
    model: ModelOpt = None,
    data_dir: DataDir = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="System message.")] = None,
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.8,
    top_p: TopP = 0.95,
    top_k: TopK = 0,
    seed: Seed = None,
) -> None:
    """Chat in the terminal. Type a message and Enter; /reset clears the history, /exit or Ctrl-D quits."""
    from jamba_runtime.llm import LLM

    settings = _settings(data_dir, model, device, dtype)
    params = _params(max_tokens, temperature, top_p, top_k, seed, None)
    llm = LLM(model=_model_path(settings), device=settings.device, dtype=settings.dtype)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo()
            return
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            messages = list(base)
            continue
        messages.append({"role": "user", "content": text})
        typer.echo("jamba> ", nl=False)
        reply = ""
        for delta in llm.stream(llm.chat_prompt_ids(messages), params):
            reply += delta
            typer.echo(delta, nl=False)
        typer.echo()
        messages.append({"role": "assistant", "content": reply})


@app.command()
def serve(
    model: ModelOpt = None,
    data_dir: DataDir = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind [env: JAMBA_STACK_HOST]; default 127.0.0.1.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port [env: JAMBA_STACK_PORT]; default 8000.")
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option("--served-model-name", help="Name(s) clients pass as `model`, comma-separated."),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", help="Context limit in tokens.")
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option("--max-num-seqs", help="Most sequences running at once.")
    ] = None,
    cache_memory_gb: Annotated[
        float | None, typer.Option("--cache-memory-gb", help="Memory for KV blocks + Mamba state slots.")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", help="Largest request body; larger gets 413.")
    ] = None,
    quantization: Annotated[
        str | None,
        typer.Option(
            "--quantization", help="experts_int8: MoE experts in int8 [env: JAMBA_STACK_QUANTIZATION]."
        ),
    ] = None,
    kv_cache_dtype: Annotated[
        str | None,
        typer.Option(
            "--kv-cache-dtype",
            help="auto (model dtype) or fp8: float8 KV cache [env: JAMBA_STACK_KV_CACHE_DTYPE].",
        ),
    ] = None,
    mamba_ssm_dtype: Annotated[
        str | None,
        typer.Option(
            "--mamba-ssm-dtype",
            help="float32 (default) or bfloat16: Mamba state precision [env: JAMBA_STACK_MAMBA_SSM_DTYPE].",
        ),
    ] = None,
    tensor_parallel_size: Annotated[
        int,
        typer.Option(
            "--tensor-parallel-size",
            help="Spread the model over this many GPUs of this host (CPU: processes).",
        ),
    ] = 1,
    load_format: Annotated[
        str,
        typer.Option(
            "--load-format",
            help="auto (the checkpoint's weights) or dummy: random weights from config.json, to measure a shape.",
        ),
    ] = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the OpenAI-compatible API (chat, completions, models, health, metrics) and AI21's chat
    path. Set JAMBA_STACK_API_KEY to require a bearer key."""
    from jamba_runtime.async_llm import AsyncLLM
    from jamba_runtime.engine import EngineConfig
    from jamba_stack.app.server.app import serve as run_server

    settings = load_settings(
        data_dir=data_dir,
        model=model,
        device=device,
        dtype=dtype,
        host=host,
        port=port,
        served_model_name=served_model_name,
        max_body_bytes=max_body_bytes,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        mamba_ssm_dtype=mamba_ssm_dtype,
    )
    sizes = {"max_num_seqs": max_num_seqs, "cache_memory_gb": cache_memory_gb}
    engine = EngineConfig(
        **{k: v for k, v in sizes.items() if v is not None},
        kv_cache_dtype=settings.kv_cache_dtype,
        mamba_ssm_dtype=settings.mamba_ssm_dtype,
    )
    llm = AsyncLLM(
        model=_model_path(settings),
        device=settings.device,
        dtype=settings.dtype,
        max_model_len=max_model_len,
        engine=engine,
        quantization=settings.quantization or None,
        tensor_parallel_size=tensor_parallel_size,
        load_format=load_format,
    )
    run_server(llm, settings, log_level=log_level)  # shuts `llm` down (and its other ranks) when it ends


@app.command()
def demo(
    data_dir: DataDir = None,
    model: ModelOpt = None,
    prompt: Annotated[str, typer.Option(help="Prompt to complete.")] = "The hybrid Mamba and attention model",
    max_tokens: MaxTokens = 32,
) -> None:
    """The main job until the full stack lands: load the model (the tiny one, made on first use),
    stream a completion and answer a chat turn."""
    from jamba_runtime.llm import LLM
    from jamba_runtime.sampling_params import SamplingParams

    settings = _settings(data_dir, model)
    llm = LLM(model=_model_path(settings), device=settings.device, dtype=settings.dtype)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    typer.echo(f"completion of {prompt!r}:")
    for delta in llm.stream(prompt, params):
        typer.echo(delta, nl=False)
    typer.echo()
    out = llm.chat([{"role": "user", "content": "Say hello."}], params)
    typer.echo(f"chat reply ({len(out.token_ids)} tokens, finish_reason={out.finish_reason}): {out.text!r}")


if __name__ == "__main__":
    main()
