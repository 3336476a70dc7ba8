"""The ingest manifest: which files a collection holds, by content hash, so that an unchanged
file is skipped before it is parsed (`jamba_stack.retrieval.ingest` keeps it in the collection's
state dir as `manifest.sqlite`)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


class Manifest:
    """source path -> (content sha256, chunk count, the path the folder walk reached it by), in
    SQLite (each write is atomic). Bound to one Chroma collection id: a collection deleted and
    made again starts an empty manifest."""

    def __init__(self, path: Path, collection_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, sha256 TEXT, n_chunks INTEGER, ingested REAL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        if "path" not in {r[1] for r in self.db.execute("PRAGMA table_info(files)")}:
            self.db.execute("ALTER TABLE files ADD COLUMN path TEXT")  # NULL: reached as itself
        row = self.db.execute("SELECT value FROM meta WHERE key='collection_id'").fetchone()
        if row is None or row[0] != collection_id:
            self.db.execute("DELETE FROM files")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('collection_id', ?)", (collection_id,))

    def get(self, source: str) -> tuple[str, int] | None:
        row = self.db.execute("SELECT sha256, n_chunks FROM files WHERE source=?", (source,)).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, source: str, sha256: str, n_chunks: int, path: str | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files (source, sha256, n_chunks, ingested, path) VALUES (?, ?, ?, ?, ?)",
            (source, sha256, n_chunks, time.time(), path),
        )

    def set_path(self, source: str, path: str | None) -> None:
        self.db.execute("UPDATE files SET path=? WHERE source=?", (path, source))

    def paths(self) -> dict[str, str]:
        """source -> the path a walk reached it by (the source itself where that is its own path)."""
        return {r[0]: r[1] or r[0] for r in self.db.execute("SELECT source, path FROM files")}

    def remove(self, source: str) -> None:
        self.db.execute("DELETE FROM files WHERE source=?", (source,))

    def sources(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT source FROM files")]

    def close(self) -> None:
        self.db.close()
