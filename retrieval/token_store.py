"""Token vectors kept at ingest, so the MaxSim rerank reads its candidates instead of encoding
them at query time (late interaction as ColBERT does it, compressed as ColBERTv2 / PLAID do).

Ingest already runs every chunk through the embedding model; the content tokens' last hidden
states (`TokenVectors`) come out of that same pass and are written here, compressed by a codec
fixed per collection. One SQLite file in the collection's state dir (`tokens.sqlite`): a row per
chunk id with its token count, its vocabulary ids (uint16 where the vocabulary fits) and its
codes. Reads of 30-100 rows by primary key take about a millisecond; each write is one
transaction, so a kill leaves whole rows only. Rows are keyed by chunk id, which is a hash of the
chunk's source and text: a row is right for its chunk whenever it exists, so ingest writes rows
before the chunks reach Chroma and sweeps rows whose chunk is gone afterwards.

Codecs (`CODECS`; bytes per token at dim 384, ids included):
- `f16`: float16, 770 B; the exact vectors (to within float16).
- `i8`: int8 with one float16 scale per token, 388 B.
- `pca64-i8` ... : see `make_codec`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jamba_stack.retrieval.embeddings import TokenVectors
from jamba_stack.retrieval.errors import InvalidQueryError

STORE_FILE = "tokens.sqlite"


class Codec:
    """Compresses one chunk's unit token vectors (n, dim) float32 into bytes and back."""

    name: str = ""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, vecs: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, blob: bytes, n: int) -> np.ndarray:
        """(n, dim) float32 rows (unit length to within the codec's error)."""
        raise NotImplementedError

    def bytes_per_token(self) -> float:
        return len(self.encode(np.ones((1, self.dim), dtype=np.float32) / np.sqrt(self.dim)))


class F16(Codec):
    name = "f16"

    def encode(self, vecs: np.ndarray) -> bytes:
        return vecs.astype(np.float16).tobytes()

    def decode(self, blob: bytes, n: int) -> np.ndarray:
        return np.frombuffer(blob, dtype=np.float16).reshape(n, self.dim).astype(np.float32)


class I8(Codec):
    """Symmetric int8 per token: code = round(v / s * 127), s = max |v| of the token."""

    name = "i8"

    def encode(self, vecs: np.ndarray) -> bytes:
        s = np.maximum(np.abs(vecs).max(axis=1, keepdims=True), 1e-12)
        q = np.clip(np.rint(vecs / s * 127), -127, 127).astype(np.int8)
        return (s[:, 0] / 127).astype(np.float16).tobytes() + q.tobytes()

    def decode(self, blob: bytes, n: int) -> np.ndarray:
        s = np.frombuffer(blob, dtype=np.float16, count=n).astype(np.float32)
        q = np.frombuffer(blob, dtype=np.int8, offset=2 * n).reshape(n, self.dim)
        return q.astype(np.float32) * s[:, None]


CODECS: dict[str, type[Codec]] = {"f16": F16, "i8": I8}
DEFAULT_CODEC = "i8"


def make_codec(name: str, dim: int) -> Codec:
    """The codec `name` for `dim`-dimensional vectors. Raises `InvalidQueryError` for an unknown
    name."""
    if name not in CODECS:
        raise InvalidQueryError(
            f"token vector codec {name!r} is unknown: use one of {', '.join(CODECS)} or none"
        )
    return CODECS[name](dim)


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    tokens: int
    bytes: int
    """Bytes of ids and codes (the SQLite file adds its pages and index on top)."""


class TokenStore:
    """Per chunk id, its `TokenVectors`, compressed. Readers and one writer may use it at once
    (SQLite WAL); open it with `open` (creating) or `open_existing`."""

    def __init__(self, path: Path, db: sqlite3.Connection, codec: Codec) -> None:
        self.path = path
        self.db = db
        self.codec = codec

    @classmethod
    def open(cls, state_dir: Path, dim: int, codec: str = DEFAULT_CODEC) -> TokenStore:
        """The store in `state_dir`, made with `codec` if missing. Raises `InvalidQueryError`
        when it exists with another codec or dimension."""
        state_dir.mkdir(parents=True, exist_ok=True)
        db = _connect(state_dir / STORE_FILE)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            db.execute("INSERT INTO meta VALUES ('codec', ?), ('dim', ?)", (codec, str(dim)))
            meta = {"codec": codec, "dim": str(dim)}
        if meta["codec"] != codec or int(meta["dim"]) != dim:
            db.close()
            raise InvalidQueryError(
                f"the collection keeps token vectors as {meta['codec']} (dim {meta['dim']}), not {codec} "
                f"(dim {dim}): ingest with --token-vectors {meta['codec']}, or into a new collection"
            )
        return cls(state_dir / STORE_FILE, db, make_codec(codec, dim))

    @classmethod
    def open_existing(cls, state_dir: Path) -> TokenStore | None:
        """The store in `state_dir`, or None where ingest kept no token vectors."""
        path = state_dir / STORE_FILE
        if not path.is_file():
            return None
        db = _connect(path)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            db.close()
            return None
        return cls(path, db, make_codec(meta["codec"], int(meta["dim"])))

    def put(self, chunk_ids: list[str], tokens: list[TokenVectors]) -> None:
        """Write (or replace) the rows of `chunk_ids`, in one transaction."""
        rows = []
        for cid, t in zip(chunk_ids, tokens, strict=True):
            ids = t.ids.astype(np.uint16 if t.ids.max(initial=0) < 65536 else np.int32)
            rows.append((cid, len(t.ids), ids.dtype.itemsize, ids.tobytes(), self.codec.encode(t.vecs)))
        with _transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?)", rows)

    def get(self, chunk_ids: list[str]) -> dict[str, TokenVectors]:
        """The rows of `chunk_ids` that exist, decoded."""
        out: dict[str, TokenVectors] = {}
        for i in range(0, len(chunk_ids), 500):  # SQLite's bound-parameter limit
            part = chunk_ids[i : i + 500]
            q = f"SELECT id, n, width, ids, codes FROM tokens WHERE id IN ({','.join('?' * len(part))})"
            for cid, n, width, ids, codes in self.db.execute(q, part):
                dtype = np.uint16 if width == 2 else np.int32
                out[cid] = TokenVectors(
                    np.frombuffer(ids, dtype=dtype).astype(np.int32), self.codec.decode(codes, n)
                )
        return out

    def delete(self, chunk_ids: Iterable[str]) -> None:
        ids = list(chunk_ids)
        with _transaction(self.db):
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                self.db.execute(f"DELETE FROM tokens WHERE id IN ({','.join('?' * len(part))})", part)

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM tokens")}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])

    def iter_all(self, page: int = 2000) -> Iterator[tuple[str, TokenVectors]]:
        """Every row, decoded (benchmarks)."""
        last = ""
        while True:
            rows = self.db.execute(
                "SELECT id, n, width, ids, codes FROM tokens WHERE id > ? ORDER BY id LIMIT ?", (last, page)
            ).fetchall()
            if not rows:
                return
            for cid, n, width, ids, codes in rows:
                dtype = np.uint16 if width == 2 else np.int32
                yield (
                    cid,
                    TokenVectors(
                        np.frombuffer(ids, dtype=dtype).astype(np.int32), self.codec.decode(codes, n)
                    ),
                )
            last = rows[-1][0]

    def stats(self) -> StoreStats:
        n, tokens, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(LENGTH(ids) + LENGTH(codes)), 0) FROM tokens"
        ).fetchone()
        return StoreStats(int(n), int(tokens), int(size))

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, n INTEGER, width INTEGER, ids BLOB, codes BLOB)"
    )
    return db
