"""`jamba-stack serve`: the OpenAI-compatible API server on an in-process engine."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from jamba_stack.app.cli.options import (
    DataDir,
    DeviceOpt,
    DtypeOpt,
    InvalidOptionError,
    ModelOpt,
    fail,
    model_path,
    settings,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


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
        int | None,
        typer.Option(
            "--max-body-bytes",
            help="Largest request body; larger gets 413 [env: JAMBA_STACK_MAX_BODY_BYTES]; default 16 MiB.",
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            "--allowed-hosts",
            help="Host names the API answers besides loopback and --host, comma-separated; *.example.com, "
            "or * for any [env: JAMBA_STACK_ALLOWED_HOSTS].",
        ),
    ] = None,
    max_seqs_per_request: Annotated[
        int | None,
        typer.Option(
            "--max-seqs-per-request",
            help="Most sequences one request asks for (prompts x n) [env: JAMBA_STACK_MAX_SEQS_PER_REQUEST]; "
            "default 64.",
        ),
    ] = None,
    max_queued_requests: Annotated[
        int | None,
        typer.Option(
            "--max-queued-requests",
            help="Most requests waiting for their first token; more get 429 "
            "[env: JAMBA_STACK_MAX_QUEUED_REQUESTS]; default 256.",
        ),
    ] = None,
    default_max_tokens: Annotated[
        int | None,
        typer.Option(
            "--default-max-tokens",
            help="Answer length when a request leaves max_tokens out [env: JAMBA_STACK_DEFAULT_MAX_TOKENS]; "
            "default 4096.",
        ),
    ] = None,
    max_tokens_limit: Annotated[
        int | None,
        typer.Option(
            "--max-tokens-limit",
            help="Largest max_tokens a request may ask for [env: JAMBA_STACK_MAX_TOKENS_LIMIT]; default 32768.",
        ),
    ] = None,
    max_documents: Annotated[
        int | None,
        typer.Option(
            "--max-documents",
            help="Most documents in one request [env: JAMBA_STACK_MAX_DOCUMENTS]; default 256.",
        ),
    ] = None,
    max_tools: Annotated[
        int | None,
        typer.Option(
            "--max-tools", help="Most tools in one request [env: JAMBA_STACK_MAX_TOOLS]; default 128."
        ),
    ] = None,
    max_header_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-header-bytes",
            help="Largest request line + headers [env: JAMBA_STACK_MAX_HEADER_BYTES]; default 64 KiB.",
        ),
    ] = None,
    body_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--body-timeout-s",
            help="Seconds a request body may take to arrive, then 408 [env: JAMBA_STACK_BODY_TIMEOUT_S]; "
            "default 60.",
        ),
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
    warm_up: Annotated[
        bool,
        typer.Option(
            "--warm-up/--no-warm-up",
            help="Before listening, run one short request and capture every decode graph size (GPU), "
            "so that the first requests pay for no capture or kernel compile; off starts sooner.",
        ),
    ] = True,
    async_scheduling: Annotated[
        bool | None,
        typer.Option(
            "--async-scheduling/--no-async-scheduling",
            help="Launch each decode step before the last one's tokens are read, so the host's work "
            "overlaps the GPU's (the same tokens either way). Default: on for CUDA, off on CPU.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the OpenAI-compatible API (chat, completions, models, health, metrics) and AI21's chat
    path. Set JAMBA_STACK_API_KEY to require a bearer key. Limits on what one request may ask:
    docs/server.md."""
    from jamba_runtime import AsyncLLM, EngineArgs, EngineConfig
    from jamba_stack.app.server.app import serve as run_server

    if log_level not in LOG_LEVELS:
        fail(InvalidOptionError(f"--log-level {log_level!r} is invalid: use one of {', '.join(LOG_LEVELS)}"))

    s = settings(
        data_dir=data_dir,
        model=model,
        device=device,
        dtype=dtype,
        host=host,
        port=port,
        served_model_name=served_model_name,
        max_body_bytes=max_body_bytes,
        allowed_hosts=allowed_hosts,
        max_seqs_per_request=max_seqs_per_request,
        max_queued_requests=max_queued_requests,
        default_max_tokens=default_max_tokens,
        max_tokens_limit=max_tokens_limit,
        max_documents=max_documents,
        max_tools=max_tools,
        max_header_bytes=max_header_bytes,
        body_timeout_s=body_timeout_s,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        mamba_ssm_dtype=mamba_ssm_dtype,
    )
    sizes = {"max_num_seqs": max_num_seqs, "cache_memory_gb": cache_memory_gb}
    engine = EngineConfig(
        **{k: v for k, v in sizes.items() if v is not None},
        kv_cache_dtype=s.kv_cache_dtype,
        mamba_ssm_dtype=s.mamba_ssm_dtype,
        async_scheduling=async_scheduling,
    )
    args = EngineArgs(
        model=model_path(s),
        device=s.device,
        dtype=s.dtype,
        max_model_len=max_model_len,
        engine=engine,
        quantization=s.quantization or None,
        tensor_parallel_size=tensor_parallel_size,
        load_format=load_format,
    )
    llm = AsyncLLM.from_args(args)
    if warm_up:
        t = time.perf_counter()
        graphs = llm.engine.warm_up()
        typer.echo(
            f"warmed up in {time.perf_counter() - t:.1f} s ({graphs} decode graphs captured)", err=True
        )
    run_server(llm, s, log_level=log_level)  # shuts `llm` down (and its other ranks) when it ends
