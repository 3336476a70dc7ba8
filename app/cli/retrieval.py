"""Retrieval commands: `ingest`, `search` and `ask` (RAG with citations)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.cli.data import (
    NothingUsableError,
    note_new_data_dir,
    nothing_usable_message,
    require_store,
    store_location,
    with_location,
)
from jamba_stack.app.cli.options import (
    ApiKey,
    AsJson,
    ChatModelOpt,
    ChromaUrl,
    Collection,
    DataDir,
    DeviceOpt,
    DtypeOpt,
    EmbedderOpt,
    InvalidOptionError,
    Quiet,
    fail,
    open_chat_model,
    settings,
)


def ingest_cmd(
    path: Annotated[Path, typer.Argument(help="A file, a folder, or a BEIR-style corpus.jsonl.")],
    collection: Collection,
    data_dir: DataDir = None,
    chroma_url: ChromaUrl = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="Refuse paths and links outside this folder (default: the folder ingested)."
        ),
    ] = None,
    glob: Annotated[
        str | None,
        typer.Option("--glob", help='Files to take from a folder, e.g. "**/*.md" (default: all supported).'),
    ] = None,
    embedder: EmbedderOpt = "minilm",
    chunk_tokens: Annotated[
        int | None, typer.Option("--chunk-tokens", help="Tokens per chunk (default: the embedder's window).")
    ] = None,
    overlap_tokens: Annotated[int, typer.Option("--overlap-tokens", help="Overlap between chunks.")] = 32,
    max_file_mb: Annotated[float, typer.Option("--max-file-mb", help="Skip larger files.")] = 64.0,
    prune: Annotated[
        bool, typer.Option("--prune/--no-prune", help="Delete chunks of files gone from the folder.")
    ] = True,
    as_json: AsJson = False,
    quiet: Quiet = False,
) -> None:
    """Ingest PATH into a collection: load, chunk, embed, store in Chroma and BM25. Unchanged files
    are skipped; changed files have only their changed chunks re-embedded. Exits 2, naming what
    was skipped and why, when PATH holds nothing usable (no collection is left behind)."""
    from jamba_stack.retrieval.ingest import ingest
    from jamba_stack.retrieval.store import Store

    s = settings(data_dir=data_dir, chroma_url=chroma_url)
    try:
        if not math.isfinite(max_file_mb) or max_file_mb <= 0:
            raise InvalidOptionError(f"--max-file-mb={max_file_mb} is invalid: use a size in MB above 0")
        if glob is not None and (not glob or Path(glob).is_absolute()):
            raise InvalidOptionError(
                f"--glob={glob!r} is invalid: use a pattern relative to PATH, e.g. '**/*.md'"
            )
        note_new_data_dir(s)
        existed = collection in Store(s.data_dir, s.chroma_url).list_collections()
        report = ingest(
            path,
            collection,
            data_dir=s.data_dir,
            chroma_url=s.chroma_url,
            root=root,
            glob=glob,
            embedder=embedder,
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens,
            max_bytes=int(max_file_mb * 1024 * 1024),
            prune=prune,
            progress=not quiet and not as_json,
        )
        if report.files_new + report.files_changed + report.files_unchanged == 0:
            if not existed and report.chunks_total == 0:  # an empty collection would only mislead search
                Store(s.data_dir, s.chroma_url).delete_collection(collection)
            if as_json:
                typer.echo(json.dumps(report.to_json() | {"error": "nothing_usable"}, indent=2))
            else:
                typer.echo(report.summary(), err=True)
            raise NothingUsableError(nothing_usable_message(path, glob, report, existed))
    except (JambaStackError, ValueError) as e:
        fail(e)
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    if not as_json:
        typer.echo(f"store: {store_location(s)}")


def _parse_filter(filters: str | None) -> dict[str, Any] | None:
    """--filter's JSON. Raises `InvalidQueryError` when it is not JSON."""
    from jamba_stack.retrieval.errors import InvalidQueryError

    if not filters:
        return None
    try:
        return json.loads(filters)
    except json.JSONDecodeError as e:
        raise InvalidQueryError(f"--filter is not valid JSON ({e.msg}): {filters!r}") from e


def _read_queries(path: Path) -> list[tuple[str, str]]:
    from jamba_stack.retrieval.errors import InvalidQueryError

    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidQueryError(f"cannot read queries file {path}: {e.strerror or e}") from e
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append((str(obj["_id"]), str(obj["text"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidQueryError(f"{path}:{n}: expected a JSON object with _id and text ({e})") from e
    return out


def search_cmd(
    query: Annotated[str | None, typer.Argument(help="What to search for (omit with --queries).")] = None,
    collection: Collection = ...,  # type: ignore[assignment]
    k: Annotated[int, typer.Option("--k", "-k", help="How many hits.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries", help='JSONL file, one {"_id", "text"} per line; prints one JSON line per query.'
        ),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="hybrid, dense or bm25.")] = "hybrid",
    filters: Annotated[
        str | None,
        typer.Option("--filter", help='Chroma where filter as JSON, e.g. \'{"source": "/abs/a.pdf"}\'.'),
    ] = None,
    rerank: Annotated[
        str | None,
        typer.Option(
            "--rerank",
            "--reranker",
            help="Rerank the fused top 30 as `ask` does: maxsim (offline, the embedder's token vectors), "
            "maxsim:WEIGHT[:idf|none], or a local cross-encoder folder; none; default: maxsim where ingest stored every chunk's token vectors, else none.",
        ),
    ] = None,
    fusion: Annotated[
        str, typer.Option("--fusion", help="convex (min-max weighted sum, default) or rrf (reciprocal rank).")
    ] = "convex",
    mmr: Annotated[
        bool, typer.Option("--mmr", help="Diversify results (maximal marginal relevance).")
    ] = False,
    unique_docs: Annotated[
        bool, typer.Option("--unique-docs", help="At most one chunk per document.")
    ] = False,
    embedder: EmbedderOpt = "minilm",
    data_dir: DataDir = None,
    chroma_url: ChromaUrl = None,
) -> None:
    """Search a collection: dense + BM25, fused (optionally reranked and diversified)."""
    from jamba_stack.retrieval.errors import InvalidQueryError, QueryTooLongError
    from jamba_stack.retrieval.search import open_retriever

    s = settings(data_dir=data_dir, chroma_url=chroma_url)
    try:
        if (query is None) == (queries is None):
            raise InvalidQueryError("pass a query, or --queries FILE.jsonl, not both (and not neither)")
        where = _parse_filter(filters)
        batch = _read_queries(queries) if queries is not None else None
        require_store(s, collection)
        retriever = open_retriever(
            collection,
            data_dir=s.data_dir,
            chroma_url=s.chroma_url,
            embedder=embedder,
            reranker=rerank,
            fusion=fusion,
        )
        if retriever.collection.count() == 0:
            raise InvalidQueryError(
                f"collection {collection!r} is empty (0 chunks, in {store_location(s)}): ingest files into it "
                f"first (jamba-stack ingest PATH --collection {collection})"
            )
        opts: dict[str, Any] = {"mode": mode, "filters": where, "mmr": mmr, "unique_docs": unique_docs}
        if batch is None:
            hits = retriever.search(query or "", k, **opts)
            if as_json:
                typer.echo(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
            else:
                for h in hits:
                    where_s = h.source + (f" p.{h.metadata['page']}" if "page" in h.metadata else "")
                    typer.echo(f"{h.rank:>3}  {h.score:.4f}  {h.doc_id}  {where_s}\n     {h.text[:200]!r}")
                if not hits:
                    typer.echo("no hits (a --filter that matches no chunk leaves nothing to rank)", err=True)
            return
        # One query's error (too long, empty) is reported on its line; the batch goes on.
        from tqdm.auto import tqdm

        for qid, text in tqdm(batch, desc="searching", unit="query", disable=not sys.stderr.isatty()):
            try:
                out = {"query_id": qid, "results": [h.to_json() for h in retriever.search(text, k, **opts)]}
            except (InvalidQueryError, QueryTooLongError) as e:
                out = {"query_id": qid, "results": [], "error": str(e)}
            typer.echo(json.dumps(out, ensure_ascii=False))
    except (JambaStackError, ValueError) as e:
        fail(with_location(e, s))


def ask_cmd(
    question: Annotated[str, typer.Argument(help="The question to answer from the collection.")],
    collection: Collection,
    model: ChatModelOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many chunks to give the model.")] = 5,
    rerank: Annotated[
        str | None,
        typer.Option(
            "--rerank",
            help="Rerank the fused top 30: maxsim (default; offline, the embedder's token vectors), "
            "maxsim:WEIGHT[:idf|none], a local cross-encoder folder, or none.",
        ),
    ] = None,
    filters: Annotated[
        str | None,
        typer.Option("--filter", help='Chroma where filter as JSON, e.g. \'{"format": "pdf"}\'.'),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most answer tokens.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy (default).")] = 0.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Same seed, same sampled answer.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (answer, citations, usage); no streaming.")
    ] = False,
    api_key: ApiKey = None,
    embedder: EmbedderOpt = "minilm",
    data_dir: DataDir = None,
    chroma_url: ChromaUrl = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Answer QUESTION from a collection with citations: hybrid search, then the model with the
    chunks as documents; streams the answer, then lists the sources its [n] markers point to."""
    from jamba_stack.retrieval.rag import Answer, ask, ask_stream

    s = settings(data_dir=data_dir, chroma_url=chroma_url, model=model, device=device, dtype=dtype)
    try:
        where = _parse_filter(filters)
        if not question.strip():
            from jamba_stack.retrieval.errors import EmptyQuestionError

            raise EmptyQuestionError(
                'the question is empty: ask something, e.g. jamba-stack ask "What is X?" -c C'
            )
        from jamba_stack.retrieval.search import open_retriever

        require_store(s, collection)
        retriever = open_retriever(
            collection, data_dir=s.data_dir, chroma_url=s.chroma_url, embedder=embedder
        )
        chat = open_chat_model(s, api_key)
        opts: dict[str, Any] = {
            "k": k,
            "rerank": rerank,
            "filters": where,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
        }
        try:
            if as_json:
                typer.echo(json.dumps(ask(question, retriever, chat, **opts).to_json(), ensure_ascii=False))
                return
            answer: Answer | None = None
            for event in ask_stream(question, retriever, chat, **opts):
                if isinstance(event, Answer):
                    answer = event
                else:
                    typer.echo(event, nl=False)
            typer.echo()
        finally:
            chat.close()
        assert answer is not None, "ask_stream ends with the Answer"
        _print_sources(answer)
    except (JambaStackError, ValueError) as e:
        fail(with_location(e, s))


def _print_sources(answer) -> None:  # noqa: ANN001 - jamba_stack.retrieval.rag.Answer
    if not answer.citations:
        return
    head = (
        "Sources:"
        if not answer.uncited
        else "Sources (the answer cites none; these are the chunks it was given):"
    )
    typer.echo(f"\n{head}")
    for c in answer.citations:
        where = c.source + (f" p.{c.page}" if c.page is not None else "")
        typer.echo(f"  [{c.n}] {where}  (score {c.score:.4f}, chunk {c.chunk_id})")
        typer.echo(f"      {c.snippet(200)}")
    if answer.invalid_citations:
        bad = ", ".join(f"[{n}]" for n in answer.invalid_citations)
        typer.echo(f"note: the answer cites {bad}, which match no source (left out)", err=True)
    if answer.dropped_documents:
        typer.echo(
            f"note: {answer.dropped_documents} retrieved chunk(s) did not fit the model's context "
            "(left out or cut)",
            err=True,
        )
