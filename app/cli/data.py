"""The data dir and its store as commands name them: where a command reads and writes (absolute),
a note when a command is about to make a new data dir, errors that say where they looked, and the
ingest that found nothing usable."""

from __future__ import annotations

from pathlib import Path

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.settings import Settings
from jamba_stack.retrieval.errors import CollectionNotFoundError

_SHOWN = 8  # file names an error lists before "and N more"


class NothingUsableError(JambaStackError):
    """An ingest found no file it could read: an empty folder, only unsupported types, or only
    files that were skipped (empty, corrupt, too large)."""

    http_status = 400
    code = "nothing_to_ingest"


def store_location(s: Settings) -> str:
    """Where the collections live: the Chroma server, or the embedded store in the data dir."""
    return (
        f"Chroma server {s.chroma_url}"
        if s.chroma_url
        else f"{s.data_dir / 'chroma'} (data dir {s.data_dir})"
    )


def note_new_data_dir(s: Settings) -> None:
    """Say so when this command is about to make a data dir: from another folder, the default
    `./data` is another store."""
    from jamba_stack.app.cli.options import note

    if not s.data_dir.exists():
        note(
            f"note: making a new data dir {s.data_dir}; to use one store from every folder, set "
            "JAMBA_STACK_DATA_DIR (or pass --data-dir)"
        )


class NoStoreError(CollectionNotFoundError):
    """A reading command was pointed at a data dir that holds no store (the message names it)."""


def require_store(s: Settings, collection: str) -> None:
    """Raise `CollectionNotFoundError` naming the data dir when it holds no store at all (a
    command that only reads must not make an empty one there)."""
    if not s.chroma_url and not (s.data_dir / "chroma").is_dir():
        raise NoStoreError(
            f"collection {collection!r} does not exist: the data dir {s.data_dir} holds no collections. "
            f"Ingest into it first (jamba-stack ingest PATH --collection {collection}), or pass --data-dir "
            "/ set JAMBA_STACK_DATA_DIR to the folder you ingested into"
        )


def with_location(e: Exception, s: Settings) -> Exception:
    """A `CollectionNotFoundError` with the store it looked in added; other errors as they are."""
    if isinstance(e, CollectionNotFoundError) and not isinstance(e, NoStoreError):
        return CollectionNotFoundError(
            f"{e} (looked in {store_location(s)}; pass --data-dir or set JAMBA_STACK_DATA_DIR if it lives "
            "elsewhere)"
        )
    return e


def nothing_usable_message(path: Path, glob: str | None, report, existed: bool) -> str:  # noqa: ANN001 - IngestReport
    """Why an ingest of `path` found nothing usable: the files skipped (with reasons, listed by
    the report's summary) and the files of types ingest does not read."""
    from jamba_stack.retrieval.loaders import SUPPORTED_SUFFIXES

    parts = []
    if report.skipped:
        parts.append(f"{len(report.skipped)} file(s) skipped (reasons above)")
    if path.is_dir() and glob is None:
        other = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() not in SUPPORTED_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if other:
            names = ", ".join(other[:_SHOWN]) + (
                f" and {len(other) - _SHOWN} more" if len(other) > _SHOWN else ""
            )
            parts.append(f"{len(other)} file(s) of types ingest does not read ({names})")
    found = "; ".join(parts) or ("the folder is empty" if path.is_dir() else "nothing to read")
    types = " ".join(sorted(SUPPORTED_SUFFIXES))
    where = "matching " + repr(glob) if glob else f"of a supported type ({types})"
    kept = (
        f"; collection {report.collection!r} is unchanged ({report.chunks_total} chunks)"
        if existed
        else "; no collection was made"
    )
    return f"nothing usable in {path.resolve()}: {found}. Add readable files {where}{kept}"
