"""RAFT commands: `raft generate`, `raft eval` and `raft train`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.cli.data import note_new_data_dir, require_store, with_location
from jamba_stack.app.cli.options import (
    ApiKey,
    ChatModelOpt,
    ChromaUrl,
    DataDir,
    DeviceOpt,
    DtypeOpt,
    InvalidOptionError,
    Quiet,
    ServedModel,
    fail,
    open_chat_model,
    settings,
)
from jamba_stack.app.settings import Settings
from jamba_stack.chat import ChatModel

raft_app = typer.Typer(
    help="RAFT: fine-tuning data with oracle + distractor documents, LoRA training, evaluation.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@raft_app.command("generate")
def generate_cmd(
    docs: Annotated[Path, typer.Option("--docs", help="Corpus: a file, a folder or a BEIR corpus.jsonl.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (rows, checkpoint, exports).")],
    model: ChatModelOpt = None,
    questions: Annotated[
        Path | None,
        typer.Option(
            "--questions",
            help='JSONL of {"question", "answer", "source" | "doc_id"}: no questions generated.',
        ),
    ] = None,
    questions_per_chunk: Annotated[
        int, typer.Option("--questions-per-chunk", help="Questions per chunk.")
    ] = 3,
    distractors: Annotated[int, typer.Option("--distractors", help="Distractor documents per row (k).")] = 4,
    p: Annotated[float, typer.Option("--p", help="Probability a row shows its oracle document.")] = 0.8,
    hard_ratio: Annotated[
        float, typer.Option("--hard-ratio", help="Share of distractors that are retrieved hard negatives.")
    ] = 0.5,
    not_same_source: Annotated[
        bool, typer.Option("--not-same-source", help="No distractor from the oracle's own document.")
    ] = False,
    no_oracle_answer: Annotated[
        str, typer.Option("--no-oracle-answer", help="Rows without the oracle: memory (paper) or abstain.")
    ] = "memory",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same dataset.")] = 0,
    chunk_tokens: Annotated[
        int | None, typer.Option("--chunk-tokens", help="Tokens per chunk (default: the RAG default).")
    ] = None,
    overlap_tokens: Annotated[
        int, typer.Option("--overlap-tokens", help="Overlap between chunks (tokens chunking).")
    ] = 32,
    chunking: Annotated[
        str,
        typer.Option(
            "--chunking",
            help="tokens: the RAG ingest's chunker; semantic: cut where adjacent sentences' embeddings "
            "differ most (chunks still at most --chunk-tokens, no overlap).",
        ),
    ] = "tokens",
    semantic_percentile: Annotated[
        float,
        typer.Option(
            "--semantic-percentile",
            help="Semantic chunking: gaps less similar than this percentile of a section's gaps are cuts.",
        ),
    ] = 10.0,
    max_chunks: Annotated[
        int | None, typer.Option("--max-chunks", help="Use only the first N chunks.")
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Budget of each teacher answer.")] = 384,
    question_max_tokens: Annotated[
        int, typer.Option("--question-max-tokens", help="Budget of each question request.")
    ] = 384,
    temperature: Annotated[float, typer.Option("--temperature", help="Teacher sampling temperature.")] = 0.7,
    retries: Annotated[
        int, typer.Option("--retries", help="Regenerations of a row that fails verification.")
    ] = 2,
    grammar: Annotated[
        bool,
        typer.Option(
            "--grammar/--no-grammar",
            help="Constrain the teacher's quotes to shown sentences (in-process, or a server that takes regex).",
        ),
    ] = True,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Rows per checkpoint.")] = 16,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", help="Share of rows in the eval split.")
    ] = 0.1,
    hf: Annotated[
        bool | None,
        typer.Option(
            "--hf/--no-hf",
            help="The Hugging Face datasets export: --hf requires `datasets`; default: written when it is installed.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard a run with other settings in --out.")
    ] = False,
    embedder: Annotated[str, typer.Option("--embedder", help="Embedder spec, as for ingest.")] = "minilm",
    collection: Annotated[
        str | None, typer.Option("--collection", help="Collection for the corpus (default: one per corpus).")
    ] = None,
    api_key: ApiKey = None,
    served_model: ServedModel = None,
    data_dir: DataDir = None,
    chroma_url: ChromaUrl = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """Generate RAFT rows from a corpus and write every export into --out (resumable)."""
    from jamba_stack.retrieval.raft.generate import RaftConfig
    from jamba_stack.retrieval.raft.pipeline import CorpusSpec, run_generation
    from jamba_stack.retrieval.raft.teacher import Teacher

    s = settings(data_dir=data_dir, chroma_url=chroma_url, model=model, device=device, dtype=dtype)
    try:
        cfg = RaftConfig(
            questions_per_chunk=questions_per_chunk, distractors=distractors, p=p, hard_ratio=hard_ratio,
            not_same_source=not_same_source, no_oracle_answer=no_oracle_answer,  # type: ignore[arg-type]
            seed=seed, retries=retries, max_tokens=max_tokens, question_max_tokens=question_max_tokens,
            temperature=temperature, grammar=grammar,
            max_chunks=max_chunks, checkpoint_every=checkpoint_every, progress=not quiet,
        )  # fmt: skip
        corpus = CorpusSpec(
            docs, embedder=embedder, collection=collection, chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens, chunking=chunking, semantic_percentile=semantic_percentile,
        )  # fmt: skip
        note_new_data_dir(s)
        teacher = Teacher(open_chat_model(s, api_key, served_model), grammar=grammar, temperature=temperature)
        summary, report = run_generation(
            corpus, out, teacher, cfg, data_dir=s.data_dir, chroma_url=s.chroma_url,
            questions_file=questions, overwrite=overwrite, eval_fraction=eval_fraction, hf=hf,
        )  # fmt: skip
    except (JambaStackError, ValueError) as e:
        fail(e)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{summary.text()}\nsplits: {report['splits']}; exports in {out}")
    for export, why in report["skipped_exports"].items():
        typer.echo(
            f"note: the {export} export was skipped: {why} (pip install 'jamba-stack[train]')", err=True
        )


@raft_app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="The --out folder of `raft generate`.")],
    model: ChatModelOpt = None,
    split: Annotated[str, typer.Option("--split", help="Which split to answer.")] = "eval",
    limit: Annotated[int | None, typer.Option("--limit", help="Answer only the first N rows.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Budget of each answer.")] = 384,
    rag_k: Annotated[
        str | None,
        typer.Option(
            "--rag-k",
            help="Also answer with the retriever's top k chunks instead of the stored documents, "
            "for each k of a comma list (e.g. 3,5,7); the corpus collection is read from summary.json.",
        ),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="A `raft train` adapter to merge into a local --model.")
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Base + RAG against base with --adapter + RAG at each --rag-k (default 3,5,7): "
            "one table of EM, F1 and citation precision.",
        ),
    ] = False,
    api_key: ApiKey = None,
    served_model: ServedModel = None,
    data_dir: DataDir = None,
    chroma_url: ChromaUrl = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Quiet = False,
) -> None:
    """Answer the eval split with its documents; report exact match, F1, citation precision,
    abstention rate, with and without the oracle (and with retrieved top-k documents: --rag-k).
    With --compare: only the RAG runs, once for the base model and once with --adapter merged."""
    from jamba_stack.retrieval.raft.evaluate import (
        answer_rows,
        compare_table,
        format_compare,
        load_eval_rows,
        score,
    )

    s = settings(data_dir=data_dir, chroma_url=chroma_url, model=model, device=device, dtype=dtype)
    progress = not quiet and not as_json
    try:
        rows = load_eval_rows(data, split)[:limit]  # a bad --data fails before a model loads
        ks = [int(k) for k in rag_k.split(",")] if rag_k else ([3, 5, 7] if compare else [])
        if compare and adapter is None:
            raise typer.BadParameter("--compare needs --adapter (the fine-tuned model to compare)")
        if compare:
            retriever = _eval_retriever(data, s)
            base = _rag_scores(s, None, api_key, served_model, rows, retriever, ks, max_tokens, progress)
            tuned = _rag_scores(s, adapter, api_key, served_model, rows, retriever, ks, max_tokens, progress)
            table = compare_table(base, tuned, ks)
            result = {"rows": len(rows), "ks": ks, "table": table, "base": base, "finetuned": tuned}
            typer.echo(json.dumps(result) if as_json else format_compare(table))
            return
        chat = _eval_chat(s, adapter, api_key, served_model)
        result = score(rows, answer_rows(chat, rows, max_tokens=max_tokens, progress=progress))
        if ks:
            from jamba_stack.retrieval.raft.evaluate import rag_scores

            retriever = _eval_retriever(data, s)
            result["rag"] = rag_scores(chat, rows, retriever, ks, max_tokens=max_tokens, progress=progress)
    except (JambaStackError, ValueError, OSError, KeyError) as e:
        fail(with_location(e, s))
    typer.echo(json.dumps(result) if as_json else json.dumps(result, indent=1))


def _eval_chat(s: Settings, adapter: Path | None, api_key: str | None, served: str | None) -> ChatModel:
    """The answering model for `raft eval`: the configured model, with --adapter merged when given
    (which needs a local checkpoint)."""
    if adapter is None:
        return open_chat_model(s, api_key, served)
    if not s.model or s.model.startswith(("http://", "https://")):
        raise typer.BadParameter("--adapter needs a local --model checkpoint to merge into")
    from jamba_stack.chat import chat_model
    from jamba_stack.retrieval.raft.train import load_merged_llm

    return chat_model(load_merged_llm(s.model, adapter, device=s.device, dtype=s.dtype))


def _eval_retriever(data: Path, s: Settings) -> Any:
    """The retriever over the corpus collection `raft generate` recorded in summary.json."""
    from jamba_stack.retrieval.search import open_retriever

    meta = json.loads((data / "summary.json").read_text())
    require_store(s, meta["collection"])
    return open_retriever(
        meta["collection"], data_dir=s.data_dir, chroma_url=s.chroma_url, embedder=meta["embedder"]
    )


def _rag_scores(
    s: Settings,
    adapter: Path | None,
    api_key: str | None,
    served: str | None,
    rows: list[dict[str, Any]],
    retriever: Any,
    ks: list[int],
    max_tokens: int,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """`rag_scores` of a freshly loaded model: the fine-tuned run never shares an engine (and its
    prefix cache, filled under the base weights) with the base run."""
    from jamba_stack.retrieval.raft.evaluate import rag_scores

    chat = _eval_chat(s, adapter, api_key, served)
    return rag_scores(chat, rows, retriever, ks, max_tokens=max_tokens, progress=progress)


@raft_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="The --out folder of `raft generate`.")],
    out: Annotated[Path, typer.Option("--out", help="Where the LoRA adapter is saved.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Base checkpoint directory [env: JAMBA_STACK_MODEL].")
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", help="Optimizer steps, one example each (0: --epochs).")
    ] = 0,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Passes over the train split when --steps is 0.")
    ] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-4,
    r: Annotated[int, typer.Option("--r", help="LoRA rank.")] = 16,
    alpha: Annotated[int, typer.Option("--alpha", help="LoRA alpha (scale alpha/r).")] = 32,
    max_len: Annotated[int, typer.Option("--max-len", help="Tokens per example (documents trimmed).")] = 2048,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same run.")] = 0,
    device: DeviceOpt = None,
    merge_to: Annotated[
        Path | None, typer.Option("--merge-to", help="Also write base + adapter merged as a checkpoint here.")
    ] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """LoRA fine-tuning on the chat export (loss on the assistant turn only); saves the adapter."""
    from jamba_stack.retrieval.raft.train import TrainConfig, train_lora, write_merged_checkpoint

    s = settings(data_dir=data_dir, device=device)
    try:
        base = model or s.model
        if not base or base.startswith(("http://", "https://")):
            raise typer.BadParameter("--model must be a local checkpoint directory to train")
        _check_train_options(Path(base), out, merge_to, steps, epochs, lr, r, alpha, max_len, seed)
        cfg = TrainConfig(r=r, alpha=alpha, lr=lr, steps=steps, epochs=epochs, max_len=max_len, seed=seed)
        result = train_lora(Path(base), data, out, cfg, device=s.device, progress=not quiet and not as_json)
        if merge_to is not None:
            write_merged_checkpoint(Path(base), out, merge_to)
    except (JambaStackError, ValueError) as e:
        fail(e)
    if not result.losses:
        fail(InvalidOptionError(f"no training step ran: {data} has no train rows; generate more rows"))
    report = result.__dict__ | {"merged": str(merge_to) if merge_to else None}
    if as_json:
        typer.echo(json.dumps(report))
    else:
        first, last = result.losses[0], result.losses[-1]
        typer.echo(f"{len(result.losses)} steps, loss {first:.4f} -> {last:.4f}; adapter in {out}")


def _check_train_options(
    base: Path,
    out: Path,
    merge_to: Path | None,
    steps: int,
    epochs: int,
    lr: float,
    r: int,
    alpha: int,
    max_len: int,
    seed: int,
) -> None:
    """`raft train`'s options, checked before the model loads. Raises `InvalidOptionError`."""
    problems = []
    if steps < 0:
        problems.append(f"--steps {steps}: use 0 (then --epochs) or more")
    if epochs < 1:
        problems.append(f"--epochs {epochs}: use 1 or more")
    if not math.isfinite(lr) or lr <= 0:
        problems.append(f"--lr {lr}: use a learning rate above 0, e.g. 2e-4")
    hidden = _hidden_size(base)
    if r < 1 or (hidden is not None and r > hidden):
        problems.append(f"--r {r}: use a LoRA rank from 1 to the model's hidden size ({hidden or '?'})")
    if not 1 <= alpha < 2**31:
        problems.append(f"--alpha {alpha}: use 1 or more, e.g. twice --r")
    if not 16 <= max_len < 2**31:
        problems.append(f"--max-len {max_len}: use at least 16 tokens per example")
    if not 0 <= seed < 2**63:
        problems.append(f"--seed {seed}: use 0 <= seed < 2**63")
    for flag, folder in (("--out", out), ("--merge-to", merge_to)):
        if folder is not None and folder.exists() and not folder.is_dir():
            problems.append(f"{flag} {folder} is a file: name a folder (it is made if missing)")
    if problems:
        raise InvalidOptionError("; ".join(problems))


def _hidden_size(base: Path) -> int | None:
    try:
        return int(json.loads((base / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the loader says what is wrong with the checkpoint
