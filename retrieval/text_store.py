"""Chunk texts kept beside an embedded Chroma collection, so that Chroma writes vectors and
metadata only.

Embedded Chroma indexes every document it is given for its full-text search as it writes it, and
that index cannot be turned off there (a collection schema that disables it changes nothing in
local mode). We never search it (the keyword side of retrieval is BM25), yet it was most of
ingest's write: on 2 cores, 10,000 chunks of SciFact's length took 1.36 ms a chunk to upsert with
their texts and nine metadata keys, 0.70 ms without the texts (bench/NOTES.md). So a collection
made in an embedded store keeps its texts here: one SQLite file in the collection's state dir
(`texts.sqlite`), a row per chunk id.

Rows are keyed by chunk id, a hash of the chunk's source and text, so a row is right for its
chunk whenever it exists. Ingest writes a slice's rows before the slice reaches Chroma, and
deletes rows after their chunks leave it; a run killed in between leaves rows whose chunk is
missing, which the next run's sweep removes (`sweep`). A collection made on a Chroma server keeps
its texts in Chroma, where the server's other clients can read them (`Store.open`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from jamba_stack.retrieval.sqlite_file import connect, transaction

STORE_FILE = "texts.sqlite"
_BOUND = 500  # ids per statement, under SQLite's bound-parameter limit


class TextStore:
    """chunk id -> text, in SQLite (WAL: searches read while an ingest writes).

    Example:
        >>> texts = TextStore.open(col.state_dir, col.id)
        >>> texts.put(["c1"], ["The first chunk."])
        >>> texts.get(["c1", "c2"])
        {'c1': 'The first chunk.'}
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def open(cls, state_dir: Path, collection_id: str) -> TextStore:
        """The store in `state_dir`, made if missing. Bound to one Chroma collection id: a
        collection deleted and made again under the same name starts with no rows."""
        state_dir.mkdir(parents=True, exist_ok=True)
        db = connect(
            state_dir / STORE_FILE,
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
            "CREATE TABLE IF NOT EXISTS texts (id TEXT PRIMARY KEY, text TEXT NOT NULL)",
        )
        row = db.execute("SELECT value FROM meta WHERE key='collection_id'").fetchone()
        if row is None or row[0] != collection_id:
            with transaction(db):
                db.execute("DELETE FROM texts")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('collection_id', ?)", (collection_id,))
        return cls(db)

    def put(self, chunk_ids: list[str], texts: list[str]) -> None:
        """Write (or replace) the rows of `chunk_ids`, in one transaction."""
        with transaction(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO texts VALUES (?, ?)", zip(chunk_ids, texts, strict=True)
            )

    def get(self, chunk_ids: list[str]) -> dict[str, str]:
        """The texts of those of `chunk_ids` that have a row."""
        out: dict[str, str] = {}
        for i in range(0, len(chunk_ids), _BOUND):
            part = chunk_ids[i : i + _BOUND]
            sql = f"SELECT id, text FROM texts WHERE id IN ({','.join('?' * len(part))})"
            out.update(self.db.execute(sql, part).fetchall())
        return out

    def delete(self, chunk_ids: Iterable[str]) -> None:
        ids = list(chunk_ids)
        with transaction(self.db):
            for i in range(0, len(ids), _BOUND):
                part = ids[i : i + _BOUND]
                self.db.execute(f"DELETE FROM texts WHERE id IN ({','.join('?' * len(part))})", part)

    def sweep(self, keep: Iterable[str]) -> int:
        """Delete every row whose id is not in `keep` (the collection's chunk ids); returns how
        many there were."""
        gone = self.ids() - set(keep)
        if gone:
            self.delete(gone)
        return len(gone)

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM texts")}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM texts").fetchone()[0])

    def close(self) -> None:
        self.db.close()
