"""The SQLite files a collection keeps in its state dir (token vectors, chunk texts): one way to
open them and one way to write a transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


def connect(path: Path, *schema: str) -> sqlite3.Connection:
    """Open (or make) `path` in WAL mode, so readers in other processes see whole transactions
    while one process writes, and run each `CREATE ... IF NOT EXISTS` statement of `schema`. The
    connection is in autocommit mode; group writes with `transaction`. Any thread may use it (the
    sqlite3 module serializes calls on one connection)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
