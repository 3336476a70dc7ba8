"""The Documents page's work, without Streamlit: check and save uploads inside the data dir,
ingest them, list collections and their sources, delete a source.

Uploads land in `DATA_DIR/uploads/<collection>/<sanitized name>` and nowhere else: the name is
reduced to its last path part and to `[A-Za-z0-9._-]`, and the final path is checked to lie
inside that folder after resolving symlinks.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jamba_stack.app.settings import Settings
from jamba_stack.retrieval.embeddings import Embedder, make_embedder
from jamba_stack.retrieval.errors import IngestLockedError, PathNotAllowedError
from jamba_stack.retrieval.ingest import IngestReport, ingest, rebuild_bm25, try_lock
from jamba_stack.retrieval.loaders import SUPPORTED_SUFFIXES, resolve_within
from jamba_stack.retrieval.manifest import Manifest
from jamba_stack.retrieval.raft.pipeline import is_internal_collection
from jamba_stack.retrieval.store import Store, check_collection_name
from jamba_stack.ui.errors import UnsupportedFileTypeError, UploadTooLargeError

ALLOWED_SUFFIXES: tuple[str, ...] = tuple(sorted(SUPPORTED_SUFFIXES))
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120


def sanitize_filename(name: str) -> str:
    """A safe file name from an uploaded one: its last path part (either slash), ASCII letters,
    digits, `.`, `_`, `-` only, no leading dot, at most 120 characters with the suffix kept."""
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", base).lstrip("._-")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    suffix = suffix.lower()
    stem = stem[: _MAX_NAME - len(suffix) - 1] or "upload"
    return f"{stem}.{suffix}" if suffix else stem


def check_upload(name: str, size: int, max_bytes: int) -> None:
    """Raise `UnsupportedFileTypeError` for a type the loaders do not read, `UploadTooLargeError`
    for a file over `max_bytes`."""
    suffix = Path(sanitize_filename(name)).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileTypeError(
            f"{name!r} is a {suffix or 'file without a type'}, which cannot be ingested: upload one of "
            f"{', '.join(ALLOWED_SUFFIXES)}"
        )
    if size > max_bytes:
        raise UploadTooLargeError(
            f"{name!r} is {size / 2**20:.3g} MB, over the {max_bytes / 2**20:.3g} MB limit: split it, or "
            "raise JAMBA_STACK_MAX_UPLOAD_MB"
        )


def collection_uploads_dir(settings: Settings, collection: str) -> Path:
    return settings.uploads_dir / check_collection_name(collection)


def save_upload(settings: Settings, collection: str, name: str, data: bytes) -> Path:
    """Check the upload and write it into the collection's upload folder (atomically: a reader
    never sees half a file). Returns the path. Raises as `check_upload`, `InvalidQueryError` for a
    bad collection name, `PathNotAllowedError` if the path would leave the folder."""
    check_upload(name, len(data), settings.max_upload_bytes)
    folder = collection_uploads_dir(settings, collection)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / sanitize_filename(name)
    # The name has no separators left; this also refuses a symlink planted in the folder.
    if target.is_symlink():
        raise PathNotAllowedError(f"{target.name} is a symlink in the upload folder: remove it first")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return resolve_within(target, folder)


def ingest_files(
    settings: Settings,
    collection: str,
    paths: Sequence[Path],
    embedder: Embedder | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[IngestReport]:
    """Ingest `paths` (saved uploads) into `collection`, one file at a time. `on_progress(done,
    total, message)` after each file and each slice of chunks written. Raises as
    `jamba_stack.retrieval.ingest.ingest`."""
    if embedder is None:
        embedder = make_embedder(settings.embedder, cache_dir=settings.data_dir / "models" / "embeddings")
    reports = []
    total = len(paths)
    for i, path in enumerate(paths):
        written = 0

        def on_write(n: int, i: int = i, path: Path = path) -> None:
            nonlocal written
            written += n
            if on_progress is not None:
                on_progress(i, total, f"{path.name}: {written} chunks embedded")

        report = ingest(
            path,
            collection,
            data_dir=settings.data_dir,
            chroma_url=settings.chroma_url,
            root=settings.uploads_dir,
            embedder=embedder,
            max_bytes=settings.max_upload_bytes,
            on_write=on_write,
            embed_slice=64,  # small slices: the bar moves on small uploads too
        )
        reports.append(report)
        if on_progress is not None:
            on_progress(i + 1, total, f"{path.name}: done, collection has {report.chunks_total} chunks")
    return reports


@dataclass(frozen=True)
class SourceInfo:
    source: str
    chunks: int

    @property
    def file_name(self) -> str:
        return Path(self.source).name


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    chunks: int
    sources: tuple[SourceInfo, ...]


def list_collections(settings: Settings, include_internal: bool = False) -> list[CollectionInfo]:
    """Every collection in the store with its chunk count and the files ingested into it (from the
    ingest manifest in the data dir); the RAFT builder's own corpus collections only with
    `include_internal`. Raises `StoreUnavailableError`."""
    store = Store(settings.data_dir, settings.chroma_url)
    out = []
    for name in store.list_collections():
        if not include_internal and is_internal_collection(name):
            continue
        try:
            col = store.open(name)
        except Exception:  # noqa: BLE001 - a collection another tool made with an odd name
            continue
        sources: list[SourceInfo] = []
        manifest_path = col.state_dir / "manifest.sqlite"
        if manifest_path.is_file():
            manifest = Manifest(manifest_path, col.id)
            try:
                for source in sorted(manifest.sources()):
                    got = manifest.get(source)
                    sources.append(SourceInfo(source, got[1] if got else 0))
            finally:
                manifest.close()
        out.append(CollectionInfo(name, col.count(), tuple(sources)))
    return out


@dataclass(frozen=True)
class UploadOutcome:
    """What became of one uploaded file: ingested, or skipped (with the reason; the file is then
    removed from the upload folder, so nothing unusable lingers there or feeds the RAFT builder)."""

    name: str
    ingested: bool
    reason: str = ""


def upload_outcomes(paths: Sequence[Path], reports: Sequence[IngestReport]) -> list[UploadOutcome]:
    """One outcome per file of `ingest_files(paths)`; removes the files that were skipped."""
    out = []
    for path, report in zip(paths, reports, strict=True):
        usable = report.files_new + report.files_changed + report.files_unchanged
        if usable:
            out.append(UploadOutcome(path.name, True))
            continue
        reasons = [s.reason for s in report.skipped] or ["no text found in it"]
        path.unlink(missing_ok=True)
        out.append(UploadOutcome(path.name, False, "; ".join(reasons)))
    return out


def stray_uploads(settings: Settings, info: CollectionInfo) -> list[Path]:
    """Files in the collection's upload folder that are not in the collection (left by an upload
    that was never ingested): listed on the Documents page with a delete button."""
    folder = settings.uploads_dir / info.name
    if not folder.is_dir():
        return []
    known = {s.source for s in info.sources}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and str(p.resolve()) not in known
    )


def delete_stray_upload(settings: Settings, collection: str, name: str) -> None:
    """Remove one file from the collection's upload folder (never a path outside it)."""
    folder = collection_uploads_dir(settings, collection).resolve()
    path = folder / sanitize_filename(name)
    if path.parent == folder and path.is_file() and not path.is_symlink():
        path.unlink()


def delete_source(settings: Settings, collection: str, source: str) -> int:
    """Delete every chunk of `source` from `collection`, forget it in the manifest, rebuild BM25,
    and remove the uploaded file when it lies in the upload folder. Returns the chunks deleted.
    Raises `CollectionNotFoundError`, `IngestLockedError` (an ingest is running)."""
    store = Store(settings.data_dir, settings.chroma_url)
    col = store.open(collection)
    lock = try_lock(col)
    if lock is None:
        raise IngestLockedError(f"an ingest into {collection!r} is running: delete when it has finished")
    try:
        n = col.delete_source(source)
        manifest = Manifest(col.state_dir / "manifest.sqlite", col.id)
        try:
            manifest.remove(source)
        finally:
            manifest.close()
        rebuild_bm25(col)
    finally:
        lock.close()
    folder = collection_uploads_dir(settings, collection).resolve()
    path = Path(source)
    if path.parent == folder and path.is_file() and not path.is_symlink():
        path.unlink()
    return n
