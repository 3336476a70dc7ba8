"""One RAFT generation run, end to end, as both `jamba-stack raft generate` and the web app's RAFT
builder run it: ingest the corpus, generate rows with the teacher (resumable), write every export
and `summary.json`.

    >>> corpus = CorpusSpec(Path("docs/"), embedder="minilm")
    >>> summary, report = run_generation(corpus, Path("out/"), Teacher(model), RaftConfig(seed=1),
    ...                                  data_dir=Path("data"), on_progress=print)
    >>> print(summary.text()); report["splits"]

Both callers make the same resume fingerprint (`CorpusSpec.fingerprint` and the teacher's name),
so a run started in one can be resumed from the other.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jamba_stack.retrieval.embeddings import make_embedder
from jamba_stack.retrieval.raft.corpus import build_corpus
from jamba_stack.retrieval.raft.errors import OptionalDependencyError, RaftError
from jamba_stack.retrieval.raft.export import export_all
from jamba_stack.retrieval.raft.generate import Progress, RaftConfig, Summary, generate
from jamba_stack.retrieval.raft.teacher import Teacher
from jamba_stack.retrieval.store import Store

SUMMARY = "summary.json"
"""Written last: a folder is a finished set only when it holds this (`is_finished_set`)."""

# The names `corpus.collection_name` gives the collections RAFT ingests its corpora into: internal,
# so the web app's collection lists and pickers leave them out.
_INTERNAL_COLLECTION = re.compile(r"raft-[0-9a-f]{16}")


class NoRowsError(RaftError):
    """Every question or answer of a run failed verification: there is no set to export."""

    code = "no_raft_rows"


def is_internal_collection(name: str) -> bool:
    """Whether `name` is a collection RAFT made for a corpus (not one a person ingested)."""
    return _INTERNAL_COLLECTION.fullmatch(name) is not None


def is_finished_set(folder: Path) -> bool:
    """Whether `folder` holds a set whose run finished: its exports and `summary.json`."""
    return (folder / SUMMARY).is_file() and (folder / "chat.jsonl").is_file()


@dataclass(frozen=True)
class CorpusSpec:
    """Where the rows come from and how it is chunked.

    docs: a file, a folder or a BEIR corpus.jsonl. embedder: an embedder spec (`make_embedder`).
    collection: the collection to ingest into (default: one named for the corpus and chunking).
    chunk_tokens: tokens per chunk (default: the embedder's window, as RAG ingests).
    overlap_tokens: overlap between token chunks (default: 32, at most a quarter of a chunk).
    chunking: "tokens" or "semantic". semantic_percentile: semantic chunking's cut threshold.
    """

    docs: Path
    embedder: str = "minilm"
    collection: str | None = None
    chunk_tokens: int | None = None
    overlap_tokens: int | None = None
    chunking: str = "tokens"
    semantic_percentile: float = 10.0

    def overlap_for(self, chunk_tokens: int) -> int:
        return self.overlap_tokens if self.overlap_tokens is not None else min(32, chunk_tokens // 4)

    def fingerprint(self, chunk_tokens: int) -> str:
        """The corpus's part of the resume fingerprint."""
        extra = f"{self.docs.resolve()}\x00{self.chunk_tokens}\x00{self.overlap_for(chunk_tokens)}\x00{self.embedder}"
        if self.chunking != "tokens":  # runs made before semantic chunking keep their fingerprint
            extra += f"\x00{self.chunking}\x00{self.semantic_percentile}"
        return extra


def run_generation(
    corpus: CorpusSpec,
    out: Path,
    teacher: Teacher,
    cfg: RaftConfig,
    *,
    data_dir: Path,
    chroma_url: str = "",
    questions_file: Path | None = None,
    overwrite: bool = False,
    eval_fraction: float = 0.1,
    hf: bool | None = None,
    on_progress: Progress | None = None,
) -> tuple[Summary, dict[str, Any]]:
    """Ingest `corpus`, generate rows into `out`, write the exports and `out/summary.json`.
    Returns the run's `Summary` and the report written to summary.json (the summary's fields,
    splits, collection, exports skipped and why).

    `hf`: the Hugging Face `datasets` export; True requires it (checked before any work), None
    writes it when `datasets` is installed and names it under "skipped" otherwise, False skips
    it. `on_progress(phase, done, total)`: phase "ingest" once, then as `generate` reports.
    Raises `RaftError` for bad options (before the corpus is ingested), `OptionalDependencyError`,
    `NoRowsError` when no row passed verification (nothing exported; the corpus collection is
    deleted again when this run made it), and what ingest, the teacher and `generate` raise.
    `out/summary.json` is written last: until then the folder is not a finished set."""
    if not 0.0 <= eval_fraction < 1.0:
        raise RaftError(f"eval_fraction={eval_fraction} is invalid: use 0 <= fraction < 1")
    if out.exists() and not out.is_dir():
        raise RaftError(f"the output {out} is a file: name a folder for the set (it is made if missing)")
    has_datasets = importlib.util.find_spec("datasets") is not None
    if hf and not has_datasets:
        raise OptionalDependencyError(
            "the Hugging Face dataset export needs `datasets`: pip install 'jamba-stack[train]' (or pass --no-hf)"
        )
    skipped = {} if hf is not None or has_datasets else {"hf_dataset": "`datasets` is not installed"}
    embedder = make_embedder(corpus.embedder, cache_dir=Path(data_dir) / "models" / "embeddings")
    tokens = corpus.chunk_tokens or embedder.chunk_tokens
    # A folder with exports but no summary is an unfinished run: it is never listed as a set.
    (out / SUMMARY).unlink(missing_ok=True)
    store = Store(Path(data_dir), chroma_url)
    existing = set(store.list_collections())
    if on_progress is not None:
        on_progress("ingest", 0, 1)
    chunks, retriever = build_corpus(
        corpus.docs, data_dir=Path(data_dir), embedder=embedder, chroma_url=chroma_url,
        collection=corpus.collection, chunk_tokens=corpus.chunk_tokens,
        overlap_tokens=corpus.overlap_for(tokens), chunking=corpus.chunking,
        semantic_percentile=corpus.semantic_percentile, progress=cfg.progress,
    )  # fmt: skip
    if on_progress is not None:
        on_progress("ingest", 1, 1)
    rows, summary = generate(
        chunks, retriever, teacher, out, cfg, questions_file=questions_file, overwrite=overwrite,
        fingerprint_extra=corpus.fingerprint(tokens), on_progress=on_progress,
    )  # fmt: skip
    if not rows:
        name = retriever.collection.name
        if name not in existing:  # made for this run, and nothing refers to it: no orphan left
            store.delete_collection(name)
        raise NoRowsError(_no_rows_message(summary, len(chunks)))
    counts = export_all(
        out, rows, eval_fraction=eval_fraction, seed=cfg.seed, hf=bool(hf or (hf is None and has_datasets))
    )
    report = summary.to_json() | {
        "splits": counts,
        "out": str(out),
        "collection": retriever.collection.name,
        "embedder": corpus.embedder,
        "chunking": corpus.chunking,
        "skipped_exports": skipped,
    }
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / SUMMARY)
    return summary, report


def _no_rows_message(summary: Summary, chunks: int) -> str:
    """Why a run made no row, and what to change."""
    if not chunks:
        return "the corpus has no text to ask about (0 chunks): point it at files with text"
    asked = summary.questions_generated + summary.questions_from_file
    if not asked:
        return (
            f"no question was made from {chunks} chunk(s) ({summary.question_requests_failed} failed requests): "
            "check the teacher model, or pass --questions FILE"
        )
    dropped = ", ".join(f"{n} {reason}" for reason, n in summary.dropped.items()) or "none"
    return (
        f"no row passed verification: {asked} question(s), every answer dropped ({dropped}); raise the "
        "teacher's max tokens or retries, or use a stronger teacher (the tiny test model writes gibberish)"
    )
