"""Model commands: `model make-tiny`, and `generate`, `chat` and `demo` on an in-process model."""

from __future__ import annotations

from pathlib import Path
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

model_app = typer.Typer(
    help="Make and inspect model checkpoints.", no_args_is_help=True, rich_markup_mode=None
)

MaxTokens = Annotated[int, typer.Option("--max-tokens", help="Most new tokens.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 = greedy.")]
TopP = Annotated[float, typer.Option("--top-p")]
TopK = Annotated[int, typer.Option("--top-k", help="0 = off.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Same seed, same output.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")]


def _params(
    max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None, stop: list[str] | None
):  # noqa: ANN202 - SamplingParams, imported lazily
    from jamba_runtime import SamplingParams

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

    if directory.exists() and not directory.is_dir():
        fail(InvalidOptionError(f"{directory} is a file: name a folder to write the checkpoint into"))
    if (directory / "model.safetensors").exists() and not force:
        fail(InvalidOptionError(f"{directory} already holds a checkpoint: pass --force to overwrite it"))
    if not 0 <= seed < 2**63:
        fail(InvalidOptionError(f"--seed={seed} is invalid: use 0 <= seed < 2**63"))
    try:
        make_tiny_model(directory, seed=seed)
    except OSError as e:
        fail(
            InvalidOptionError(f"cannot write {directory}: {e.strerror or e}: choose a folder you can write")
        )
    typer.echo(f"wrote tiny random Jamba to {directory}")


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

    s = settings(data_dir=data_dir, model=model, device=device, dtype=dtype)
    params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
    llm = LLM(model=model_path(s), device=s.device, dtype=s.dtype)
    for delta in llm.stream(prompt, params):
        typer.echo(delta, nl=False)
    typer.echo()


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

    s = settings(data_dir=data_dir, model=model, device=device, dtype=dtype)
    params = _params(max_tokens, temperature, top_p, top_k, seed, None)
    llm = LLM(model=model_path(s), device=s.device, dtype=s.dtype)
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


def demo(
    data_dir: DataDir = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    prompt: Annotated[str, typer.Option(help="Prompt to complete.")] = "The hybrid Mamba and attention model",
    max_tokens: MaxTokens = 32,
) -> None:
    """Load the model (the tiny one, made on first use), stream a completion of PROMPT and
    answer a chat turn: a smoke test of the runtime."""
    from jamba_runtime import SamplingParams
    from jamba_runtime.llm import LLM

    s = settings(data_dir=data_dir, model=model, device=device, dtype=dtype)
    llm = LLM(model=model_path(s), device=s.device, dtype=s.dtype)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    typer.echo(f"completion of {prompt!r}:")
    for delta in llm.stream(prompt, params):
        typer.echo(delta, nl=False)
    typer.echo()
    out = llm.chat([{"role": "user", "content": "Say hello."}], params)
    typer.echo(f"chat reply ({len(out.token_ids)} tokens, finish_reason={out.finish_reason}): {out.text!r}")
