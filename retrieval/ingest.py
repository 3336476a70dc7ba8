"""The ingest pipeline: path -> loaders -> chunks -> embeddings -> Chroma + BM25, with a report.

Idempotent and crash-safe by construction:
- A manifest (SQLite, in the collection's state dir) maps each ingested file to its content hash.
  An unchanged file is skipped before it is even parsed.
- A new or changed file is chunked; chunk ids are hashes of source + text, so its chunks that are
  already in Chroma are kept (never re-embedded), missing ones are embedded and upserted, and
  chunks of the old version that are gone are deleted. Only then does the manifest take the new
  hash.
- Embeddings are written in slices as they are made. A run killed at any point leaves some files
  half-replaced in Chroma and not in the manifest; the next run redoes exactly those, embedding
  only the chunks that never reached Chroma, and ends with the same ids and counts as an
  uninterrupted run.
- Chunk texts kept beside an embedded collection (`text_store`) are written before their slice
  reaches Chroma and deleted after their chunks leave it; rows left by a kill in between are swept
  at the end of the next run.
- BM25 is rebuilt from Chroma (the source of truth) at the end of every run that changed
  anything; a `dirty` mark written before the first change and removed after the rebuild tells
  the next run, and search, that a crash left it stale.
- One ingest per collection at a time (a file lock); a second one fails at once.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from jamba_stack.retrieval.bm25 import BM25Index
from jamba_stack.retrieval.chunking import Chunk, Chunker, ChunkerLike
from jamba_stack.retrieval.embeddings import Embedder, make_embedder
from jamba_stack.retrieval.errors import IngestLockedError
from jamba_stack.retrieval.loaders import (
    DEFAULT_MAX_BYTES,
    Document,
    Found,
    SkipFile,
    Skipped,
    display_path,
    file_sha256,
    load_file,
    resolve_within,
    walk,
)
from jamba_stack.retrieval.manifest import Manifest
from jamba_stack.retrieval.store import Store, StoreCollection
from jamba_stack.retrieval.token_store import DEFAULT_CODEC, STORE_FILE, TokenStore

EMBED_SLICE = 1024
"""Chunks embedded and written per step: a kill loses at most this much embedding work."""


def bm25_dir(col: StoreCollection) -> Path:
    return col.state_dir / "bm25"


def dirty_mark(col: StoreCollection) -> Path:
    return col.state_dir / "dirty"


def try_lock(col: StoreCollection) -> IO[str] | None:
    """The collection's ingest lock (an open file; close it to release), or None if it is held."""
    col.state_dir.mkdir(parents=True, exist_ok=True)
    f = (col.state_dir / "lock").open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def rebuild_bm25(col: StoreCollection, *, save: bool = True) -> BM25Index:
    """BM25 over every chunk in Chroma; saved beside the collection when `save`."""
    ids: list[str] = []
    texts: list[str] = []
    metas: list[dict[str, Any]] = []
    for page_ids, page_texts, page_metas in col.iter_all():
        ids += page_ids
        texts += page_texts
        metas += page_metas
    idx = BM25Index.build(ids, texts, metas, collection_id=col.id)
    if save:
        idx.save(bm25_dir(col))
        dirty_mark(col).unlink(missing_ok=True)
    return idx


PHASES = ("open", "plan", "embed_write", "finalize", "bm25", "tokens")
"""The timed phases of an ingest, in order: `IngestReport.seconds` sums them to the run's time."""


@dataclass
class IngestReport:
    """What an ingest did. `chunks_total` is the collection's count at the end; BM25 holds the same."""

    collection: str
    files_seen: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    documents: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    chunks_kept: int = 0
    chunks_total: int = 0
    bm25_total: int = 0
    token_vectors: int = 0
    """Chunks whose token vectors this run stored (new chunks, and older ones that lacked them)."""
    token_codec: str = ""
    token_bytes: int = 0
    """Bytes of the collection's stored token ids and codes at the end of the run."""
    embedder: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    """Per phase (`PHASES`, one after another), and parts of them: load and chunk (of plan);
    embed, token_write and chroma_write (of embed_write)."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        return d

    def summary(self) -> str:
        t = sum(self.seconds.get(k, 0.0) for k in PHASES)  # the others are parts of these
        lines = [
            f"collection {self.collection!r}: {self.chunks_total} chunks (BM25 {self.bm25_total})",
            f"files: {self.files_seen} seen, {self.files_new} new, {self.files_changed} changed, "
            f"{self.files_unchanged} unchanged, {self.files_removed} removed, {len(self.skipped)} skipped",
            f"chunks: {self.chunks_added} added, {self.chunks_deleted} deleted, {self.chunks_kept} kept; "
            f"{self.documents} documents parsed; {t:.1f} s",
        ]
        if self.token_codec:
            lines.append(
                f"token vectors ({self.token_codec}): {self.token_vectors} chunks stored this run, "
                f"{self.token_bytes / 1e6:.1f} MB in all"
            )
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _FilePlan:
    source: str
    sha256: str
    chunks: list[Chunk]
    add: list[Chunk]
    stale: list[str]
    keep: list[Chunk]
    new: bool


def ingest(
    path: str | Path,
    collection: str,
    *,
    data_dir: str | Path,
    chroma_url: str = "",
    root: str | Path | None = None,
    glob: str | None = None,
    embedder: Embedder | str | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int = 32,
    chunker: ChunkerLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    prune: bool = True,
    progress: bool = False,
    on_write: Callable[[int], None] | None = None,
    embed_slice: int = EMBED_SLICE,
    token_vectors: str | None = DEFAULT_CODEC,
) -> IngestReport:
    """Ingest a file or a folder (files matching `glob`, default every supported type, recursively)
    into `collection`, creating it if needed.

    `root`: `path` outside it is refused (`PathNotAllowedError`), and links in the folder that
    lead outside it are skipped; default: the folder itself (a file `path` may be anywhere).
    `prune`: chunks of files that were ingested from this folder before and that its walk no
    longer reaches (deleted, or reached through a link that is gone) are deleted. `chunk_tokens`: default
    the embedder's window (no truncation). `chunker`: anything with `chunk_many(documents)` in
    place of the token `Chunker` (e.g. `SemanticChunker`); keep one chunker per collection, since
    unchanged files are not chunked again. `embed_slice`: chunks embedded per write (a kill loses
    at most that much work). `on_write(n)` is called after each slice of `n` chunks
    reaches Chroma (progress in a UI). `token_vectors`: the codec the chunks' token vectors are
    kept in for the MaxSim rerank (`jamba_stack.retrieval.token_store`), fixed at the first ingest
    of a collection; None or "none" keeps none (and drops a store kept before); an embedder
    without token vectors (an API) keeps none either. Raises `PathNotAllowedError`, `SourceNotFoundError`,
    `EmbedderMismatchError`, `IngestLockedError`, `StoreUnavailableError`; bad files are skipped
    and listed in the report.
    """
    t0 = time.perf_counter()
    top = resolve_within(path, root)
    if not isinstance(embedder, Embedder):
        embedder = make_embedder(embedder or "minilm", cache_dir=Path(data_dir) / "models" / "embeddings")
    store = Store(data_dir, chroma_url)
    col = store.open(
        collection, embedder_name=embedder.name, dim=embedder.dim, backend=embedder.backend, create=True
    )
    report = IngestReport(collection=collection, embedder=f"{embedder.name} ({embedder.backend})")
    lock = try_lock(col)
    if lock is None:
        raise IngestLockedError(f"another ingest into {collection!r} is running: wait for it to finish")
    try:
        manifest = Manifest(col.state_dir / "manifest.sqlite", col.id)
        if chunker is None:
            chunker = Chunker(embedder.token_counter(), chunk_tokens or embedder.chunk_tokens, overlap_tokens)
        tokens = _open_tokens(col, embedder, token_vectors)
        report.token_codec = tokens.target.name if tokens is not None else ""
        report.seconds["open"] = time.perf_counter() - t0
        plans, reached = _plan(top, glob, root, max_bytes, manifest, col, chunker, report, progress)
        stale_sources = _stale_sources(top, glob, manifest, reached) if prune and top.is_dir() else []
        changes = any(p.add or p.stale or not p.new for p in plans) or bool(stale_sources)
        if changes or dirty_mark(col).exists() or not (bm25_dir(col) / "CURRENT").exists():
            dirty_mark(col).touch()
        t = time.perf_counter()
        _write(plans, col, embedder, tokens, report, progress, on_write, embed_slice)
        report.seconds["embed_write"] = time.perf_counter() - t
        t = time.perf_counter()
        for plan in plans:
            if plan.stale:
                col.delete(plan.stale)
            if plan.keep and not plan.new:  # e.g. chunk_index and mtime moved; no re-embedding
                col.update_metadata([c.id for c in plan.keep], [c.metadata for c in plan.keep])
            manifest.put(plan.source, plan.sha256, len(plan.chunks), reached.get(plan.source))
            report.chunks_deleted += len(plan.stale)
        for source in stale_sources:
            report.chunks_deleted += col.delete_source(source)
            manifest.remove(source)
            report.files_removed += 1
        report.seconds["finalize"] = time.perf_counter() - t
        t = time.perf_counter()
        chunk_ids: list[str] | None = None
        if dirty_mark(col).exists():
            idx = rebuild_bm25(col)
            chunk_ids = idx.ids
            if col.texts is not None:
                col.texts.sweep(chunk_ids)  # rows a killed run wrote or left behind
        else:
            idx = BM25Index.load(bm25_dir(col))
        report.bm25_total = len(idx) if idx is not None else 0
        report.seconds["bm25"] = time.perf_counter() - t
        if tokens is not None:
            t = time.perf_counter()
            # A run killed in here leaves counts that differ, which the next run's sync sees.
            report.token_vectors += sync_tokens(tokens, col, embedder, chunk_ids, progress)
            report.token_bytes = tokens.stats().bytes
            if tokens.codec is not tokens.target:
                report.token_codec += (
                    f" (kept as {tokens.codec.name} until the collection has {tokens.fit_tokens} tokens)"
                )
            report.seconds["tokens"] = time.perf_counter() - t
            tokens.close()
        report.chunks_total = col.count()
        manifest.close()
    finally:
        lock.close()
    return report


def _open_tokens(col: StoreCollection, embedder: Embedder, codec: str | None) -> TokenStore | None:
    if codec is None or codec == "none" or not embedder.supports_tokens:
        (col.state_dir / STORE_FILE).unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            (col.state_dir / (STORE_FILE + suffix)).unlink(missing_ok=True)
        return None
    return TokenStore.open(col.state_dir, embedder.dim, codec)


def sync_tokens(
    tokens: TokenStore,
    col: StoreCollection,
    embedder: Embedder,
    chunk_ids: list[str] | None = None,
    progress: bool = False,
) -> int:
    """Make `tokens` hold exactly the chunks in `col`: rows of chunks gone are deleted, chunks
    without a row (ingested before token vectors were kept, or written by a run killed between
    the two writes) are encoded and stored. `chunk_ids`: the collection's ids where the caller
    has them. Returns how many chunks were encoded."""
    from tqdm.auto import tqdm

    if chunk_ids is None:
        if tokens.count() == col.count():
            return 0
        chunk_ids = [i for page, _, _ in col.iter_all() for i in page]
    have = tokens.ids()
    want = set(chunk_ids)
    if have - want:
        tokens.delete(have - want)
    missing = [i for i in chunk_ids if i not in have]
    with tqdm(
        total=len(missing), desc="token vectors", unit="chunk", disable=not progress or not missing
    ) as bar:
        for s in range(0, len(missing), EMBED_SLICE):
            part = [c for c, _ in col.get(missing[s : s + EMBED_SLICE])]
            for b in range(0, len(part), embedder.batch_size):
                batch = part[b : b + embedder.batch_size]
                _, toks = embedder.embed_batch_tokens([c.text for c in batch])
                tokens.put([c.id for c in batch], toks)
                bar.update(len(batch))
    return len(missing)


def _plan(
    top: Path,
    glob: str | None,
    root: str | Path | None,
    max_bytes: int,
    manifest: Manifest,
    col: StoreCollection,
    chunker: ChunkerLike,
    report: IngestReport,
    progress: bool,
) -> tuple[list[_FilePlan], dict[str, str | None]]:
    """The plan of each new or changed file, and every file the walk reached: source -> the path
    it was reached by where that differs from the source (a link), else None."""
    from tqdm.auto import tqdm

    t = time.perf_counter()
    plans: list[_FilePlan] = []
    reached: dict[str, str | None] = {}
    files = list(walk(top, glob, Path(root) if root is not None else None))
    known = manifest.paths()
    load_s = chunk_s = 0.0
    for f in tqdm(files, desc="reading", unit="file", disable=not progress or len(files) < 2, leave=False):
        if isinstance(f, Skipped):
            report.skipped.append(f)
            continue
        assert isinstance(f, Found)
        report.files_seen += 1
        source = str(f.file)
        via = str(f.path) if f.path != f.file else None
        reached[source] = via
        if source in known and known[source] != (via or source):
            manifest.set_path(source, via)
        try:
            sha = file_sha256(f.file)
        except OSError as e:
            report.skipped.append(Skipped(display_path(f.path), f"unreadable: {e.strerror or e}"))
            continue
        old = manifest.get(source)
        if old is not None and old[0] == sha:
            report.files_unchanged += 1
            continue
        tl = time.perf_counter()
        chunks: list[Chunk] = []
        try:
            docs, skipped = load_file(f.file, max_bytes)
            load_s += time.perf_counter() - tl
            _check_unicode(docs)
            tc = time.perf_counter()
            chunks = [c for cs in chunker.chunk_many(docs) for c in cs]
            chunk_s += time.perf_counter() - tc
            report.documents += len(docs)
            report.skipped.extend(skipped)
        except SkipFile as e:
            report.skipped.append(Skipped(display_path(f.path), str(e)))
            chunks = []
        except Exception as e:  # noqa: BLE001 - one file's parser or chunker failing must not stop the batch
            report.skipped.append(Skipped(display_path(f.path), f"cannot be read ({type(e).__name__}: {e})"))
            chunks = []
        existing = set(col.ids_where({"source": source}))
        if not chunks and not existing and old is None:
            continue  # skipped and never ingested: nothing to record
        new_ids = {c.id for c in chunks}
        plan = _FilePlan(
            source=source,
            sha256=sha,
            chunks=chunks,
            add=[c for c in chunks if c.id not in existing],
            stale=sorted(existing - new_ids),
            keep=[c for c in chunks if c.id in existing],
            new=old is None,
        )
        if old is None and not existing:
            report.files_new += 1
        else:
            report.files_changed += 1
        report.chunks_kept += len(plan.keep)
        plans.append(plan)
    report.seconds["plan"] = time.perf_counter() - t
    report.seconds["load"] = load_s
    report.seconds["chunk"] = chunk_s
    return plans, reached


def _check_unicode(docs: list[Document]) -> None:
    """Raise `SkipFile` where a document holds text the tokenizer and the store cannot take (a
    lone surrogate, which a JSON escape such as \\ud800 can produce)."""
    for d in docs:
        for value in (d.text, d.context, *(v for v in d.metadata.values() if isinstance(v, str))):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise SkipFile(
                    f"holds text that is not valid Unicode ({e.reason} at character {e.start}): fix the file"
                ) from e


def _stale_sources(
    top: Path, glob: str | None, manifest: Manifest, reached: dict[str, str | None]
) -> list[str]:
    """Files ingested through `top` before (their path under it, matching the same glob) that
    this walk did not reach: deleted, renamed, or reached through a link that is gone or now
    leads outside the root."""
    out = []
    for source, path in manifest.paths().items():
        if source in reached or not Path(path).is_relative_to(top):
            continue
        rel = Path(path).relative_to(top)
        if glob is None or rel.match(glob) or Path(path).match(glob):
            out.append(source)
    return out


def _write(
    plans: list[_FilePlan],
    col: StoreCollection,
    embedder: Embedder,
    tokens: TokenStore | None,
    report: IngestReport,
    progress: bool,
    on_write: Callable[[int], None] | None,
    embed_slice: int,
) -> None:
    """Embed every chunk to add, longest first, and upsert slice by slice; with `tokens`, each
    batch's token vectors (from the same model pass) are stored before its slice reaches Chroma."""
    from tqdm.auto import tqdm

    todo = [c for p in plans for c in p.add]
    if not todo:
        return
    order = sorted(range(len(todo)), key=lambda i: -len(todo[i].text))
    with tqdm(
        total=len(todo), desc=f"embedding ({embedder.backend})", unit="chunk", disable=not progress
    ) as bar:
        embed_s = tokens_s = write_s = 0.0
        for s in range(0, len(order), embed_slice):
            part = [todo[i] for i in order[s : s + embed_slice]]
            vecs = np.zeros((len(part), embedder.dim), dtype=np.float32)
            for b in range(0, len(part), embedder.batch_size):
                batch = part[b : b + embedder.batch_size]
                t = time.perf_counter()
                if tokens is None:
                    vecs[b : b + len(batch)] = embedder.embed_batch([c.text for c in batch])
                    embed_s += time.perf_counter() - t
                else:
                    vecs[b : b + len(batch)], toks = embedder.embed_batch_tokens([c.text for c in batch])
                    tt = time.perf_counter()
                    embed_s += tt - t
                    tokens.put([c.id for c in batch], toks)
                    tokens_s += time.perf_counter() - tt
                    report.token_vectors += len(batch)
                bar.update(len(batch))
            t = time.perf_counter()
            col.upsert([c.id for c in part], vecs, [c.text for c in part], [c.metadata for c in part])
            write_s += time.perf_counter() - t
            report.chunks_added += len(part)
            if on_write is not None:
                on_write(len(part))
        # Where embed_write's time went: the model, the token store, Chroma's upserts.
        report.seconds["embed"] = embed_s
        report.seconds["token_write"] = tokens_s
        report.seconds["chroma_write"] = write_s
