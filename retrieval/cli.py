"""`ingest` and `search` commands. Mounted into the main CLI with `app.add_typer(retrieval_app)`
(no name: the commands land at the top level, `jamba-stack ingest ...`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jamba_runtime.errors import JambaStackError

app = typer.Typer(
    help="Ingest files into a collection and search it (dense + BM25 hybrid).", no_args_is_help=True
)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the stack keeps its files [env: JAMBA_STACK_DATA_DIR]."),
]
ChromaUrl = Annotated[
    str | None,
    typer.Option(
        "--chroma-url", help="Chroma server URL; empty: the embedded store [env: JAMBA_STACK_CHROMA_URL]."
    ),
]
Collection = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
EmbedderOpt = Annotated[
    str,
    typer.Option(
        "--embedder",
        help="minilm (int8 ONNX all-MiniLM-L6-v2, default), minilm-fp32, minilm-onnx, st:/path, onnx:/path, "
        "onnx-int8:/path or openai:MODEL@URL. Must match the collection's.",
    ),
]


def _settings(data_dir: Path | None, chroma_url: str | None):  # noqa: ANN202 - app.settings.Settings
    from app.settings import load_settings

    return load_settings(data_dir=data_dir, chroma_url=chroma_url)


def _fail(e: Exception) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(2)


@app.command("ingest")
def ingest_cmd(
    path: Annotated[Path, typer.Argument(help="A file, a folder, or a BEIR-style corpus.jsonl.")],
    collection: Collection,
    data_dir: DataDir = None,
    chroma_url: ChromaUrl = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Refuse paths outside this folder (default: no limit).")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Ingest PATH into a collection: load, chunk, embed, store in Chroma and BM25. Unchanged files
    are skipped; changed files have only their changed chunks re-embedded."""
    from retrieval.ingest import ingest

    s = _settings(data_dir, chroma_url)
    try:
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
    except (JambaStackError, ValueError) as e:
        raise _fail(e) from None
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())


def _read_queries(path: Path) -> list[tuple[str, str]]:
    from retrieval.errors import InvalidQueryError

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


@app.command("search")
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
    reranker: Annotated[
        Path | None,
        typer.Option("--reranker", help="Local cross-encoder folder: rerank the fused candidates."),
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
    from retrieval.errors import InvalidQueryError, QueryTooLongError
    from retrieval.search import open_retriever

    s = _settings(data_dir, chroma_url)
    try:
        if (query is None) == (queries is None):
            raise InvalidQueryError("pass a query, or --queries FILE.jsonl, not both (and not neither)")
        where: dict[str, Any] | None = None
        if filters:
            try:
                where = json.loads(filters)
            except json.JSONDecodeError as e:
                raise InvalidQueryError(f"--filter is not valid JSON ({e.msg}): {filters!r}") from e
        batch = _read_queries(queries) if queries is not None else None
        retriever = open_retriever(
            collection,
            data_dir=s.data_dir,
            chroma_url=s.chroma_url,
            embedder=embedder,
            reranker=reranker,
            fusion=fusion,
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
        raise _fail(e) from None
