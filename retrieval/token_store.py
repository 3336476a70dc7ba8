"""Token vectors kept at ingest, so the MaxSim rerank reads its candidates instead of encoding
them at query time (late interaction as ColBERT does it, compressed as ColBERTv2 / PLAID do).

Ingest already runs every chunk through the embedding model; the content tokens' last hidden
states (`TokenVectors`) come out of that same pass and are written here. One SQLite file in the
collection's state dir (`tokens.sqlite`): a row per chunk id with its token count, its vocabulary
ids (uint16 where the vocabulary fits) and its codes. Reading 30-100 rows by primary key takes
about a millisecond; each write is one transaction, so a kill leaves whole rows only. Rows are
keyed by chunk id, a hash of the chunk's source and text, so a row is right for its chunk
whenever it exists: ingest writes rows before their chunks reach Chroma and sweeps rows whose
chunk is gone afterwards.

Codecs (`make_codec`; bytes per token at dim 384, the 2 bytes of its vocabulary id included):
- `pca{d}x{b}` (default `pca128x4`, 66 B): centered, projected on the top `d` principal
  directions of the collection's own token vectors, each direction quantized to `b` bits on a
  uniform grid of +-3 (4 bits) or +-2 (2 bits) of its standard deviation. The directions are
  fitted once per collection, on its first `FIT_TOKENS` tokens; until a collection has that many,
  its rows are kept as `i8` and converted when the fit happens.
- `i8` (388 B): int8 with one float16 scale per token, fit-free.
- `f16` (770 B): the vectors themselves (to within float16).

The default: on the SciFact train split, MaxSim reranking from pca128x4 scored nDCG@10 0.7490
(top 30, blend 0.5) against 0.7488 from i8, 0.7493 from f16 and 0.7459 from pca64x4, at 11.8 KiB
per chunk on disk against 65 KiB (i8) and 129 KiB (f16) (bench/retrieval/scifact.py --grid).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jamba_stack.retrieval.embeddings import TokenVectors
from jamba_stack.retrieval.errors import InvalidQueryError
from jamba_stack.retrieval.sqlite_file import connect, transaction

STORE_FILE = "tokens.sqlite"
DEFAULT_CODEC = "pca128x4"
FIT_TOKENS = 32768
"""Tokens a fitted codec learns its directions from (about 200 chunks of 254 tokens)."""
_PCA = re.compile(r"^pca(\d+)x([248])$")


class Codec:
    """Compresses one chunk's unit token vectors (n, dim) float32 into bytes and back."""

    name: str = ""
    needs_fit = False

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, vecs: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, blob: bytes, n: int) -> np.ndarray:
        """(n, code_dim) float32 rows in the codec's space: `query(q) @ decode(...).T` is the
        cosine of each query token to each stored token, up to a constant per query token."""
        raise NotImplementedError

    def query(self, vecs: np.ndarray) -> np.ndarray:
        """Query token vectors (n, dim) mapped into the codec's space (n, code_dim)."""
        return vecs

    def roundtrip(self, vecs: np.ndarray) -> np.ndarray:
        """What storing `vecs` (n, dim) and reading them back gives, in the codec's space."""
        return self.decode(self.encode(vecs), len(vecs))

    def fit(self, sample: np.ndarray) -> None:
        """Learn the codec's parameters from token vectors (n, dim) (fitted codecs only)."""

    def params(self) -> dict[str, bytes]:
        return {}

    def load(self, params: dict[str, bytes]) -> None:
        """Take the parameters `params()` gave."""

    def bytes_per_token(self) -> int:
        """Bytes of codes per token (the vocabulary id adds 2)."""
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


class PCAQuant(Codec):
    """`pca{d}x{bits}`: z = (v - mean) @ P, P the top `d` principal directions (dim, d); each of
    z's coordinates quantized to `bits` bits on a uniform grid over +-3 (4 bits, 8 bits) or +-2
    (2 bits) of its standard deviation, codes packed. Queries map to q @ P: q . v = q . mean +
    (q @ P) . z for v in P's span, and the constant q . mean changes no ranking."""

    needs_fit = True

    def __init__(self, dim: int, d: int, bits: int) -> None:
        super().__init__(dim)
        if not 1 <= d <= dim or (d * bits) % 8:
            raise InvalidQueryError(f"codec pca{d}x{bits}: d must be 1..{dim} with d * bits a multiple of 8")
        self.d, self.bits = d, bits
        self.name = f"pca{d}x{bits}"
        self.mean = np.zeros(dim, dtype=np.float32)
        self.proj = np.eye(dim, d, dtype=np.float32)
        self.step = np.ones(d, dtype=np.float32)

    def fit(self, sample: np.ndarray) -> None:
        x = np.asarray(sample, dtype=np.float32)
        self.mean = x.mean(axis=0)
        # The principal directions, largest first: eigenvectors of the (dim, dim) covariance,
        # summed in float64 a block at a time. The same directions as the centered sample's
        # SVD, 20x faster on 131K tokens (0.3 s against 7 s on 2 cores).
        cov = np.zeros((self.dim, self.dim), dtype=np.float64)
        for i in range(0, len(x), 16384):
            xc = (x[i : i + 16384] - self.mean).astype(np.float64)
            cov += xc.T @ xc
        vals, vecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(vals)[::-1]
        proj = np.zeros((self.dim, self.d), dtype=np.float32)
        k = min(self.d, len(x))
        proj[:, :k] = vecs[:, order[:k]]
        self.proj = proj
        sd = np.maximum(((x - self.mean) @ self.proj).std(axis=0), 1e-6)
        self.step = (sd * (2.0 if self.bits == 2 else 3.0) / 2 ** (self.bits - 1)).astype(np.float32)

    def params(self) -> dict[str, bytes]:
        return {"mean": self.mean.tobytes(), "proj": self.proj.tobytes(), "step": self.step.tobytes()}

    def load(self, params: dict[str, bytes]) -> None:
        self.mean = np.frombuffer(params["mean"], dtype=np.float32).copy()
        self.proj = np.frombuffer(params["proj"], dtype=np.float32).reshape(self.dim, self.d).copy()
        self.step = np.frombuffer(params["step"], dtype=np.float32).copy()

    def encode(self, vecs: np.ndarray) -> bytes:
        half = 2 ** (self.bits - 1)
        z = (vecs - self.mean) @ self.proj  # (n, d)
        codes = (np.clip(np.floor(z / self.step), -half, half - 1) + half).astype(np.uint8)
        per = 8 // self.bits
        packed = np.zeros((len(codes), self.d // per), dtype=np.uint8)
        for j in range(per):
            packed |= codes[:, j::per] << (j * self.bits)
        return packed.tobytes()

    def decode(self, blob: bytes, n: int) -> np.ndarray:
        half, per = 2 ** (self.bits - 1), 8 // self.bits
        packed = np.frombuffer(blob, dtype=np.uint8).reshape(n, self.d // per)
        codes = np.empty((n, self.d), dtype=np.float32)
        for j in range(per):
            codes[:, j::per] = (packed >> (j * self.bits)) & (2**self.bits - 1)
        return (codes - half + 0.5) * self.step

    def query(self, vecs: np.ndarray) -> np.ndarray:
        return vecs @ self.proj


def make_codec(name: str, dim: int) -> Codec:
    """The codec `name` (`f16`, `i8`, `pca{d}x{bits}` with bits 2, 4 or 8) for `dim`-dimensional
    vectors. Raises `InvalidQueryError` for an unknown name."""
    if name == "f16":
        return F16(dim)
    if name == "i8":
        return I8(dim)
    m = _PCA.match(name)
    if m:
        return PCAQuant(dim, int(m.group(1)), int(m.group(2)))
    raise InvalidQueryError(
        f"token vector codec {name!r} is unknown: use {DEFAULT_CODEC} (the default), pca{{d}}x{{2|4|8}}, "
        "i8, f16, or none to keep no token vectors"
    )


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    tokens: int
    bytes: int
    """Bytes of ids and codes (the SQLite file adds its pages and index on top)."""


class TokenStore:
    """Per chunk id, its `TokenVectors`, compressed. Readers and one writer may use it at once
    (SQLite WAL); open it with `open` (creating) or `open_existing`."""

    def __init__(
        self, path: Path, db: sqlite3.Connection, target: Codec, fit_tokens: int = FIT_TOKENS
    ) -> None:
        self.path = path
        self.db = db
        self.target = target
        self.fit_tokens = fit_tokens
        self._interim = I8(target.dim)
        self._fitted = not target.needs_fit
        self._load_params()
        self._unfitted_tokens = 0 if self._fitted else self.stats().tokens

    @property
    def codec(self) -> Codec:
        """The codec new rows are written in and whose space `get` returns: the collection's, or
        `i8` while a fitted codec waits for its `FIT_TOKENS`."""
        return self.target if self._fitted else self._interim

    @classmethod
    def open(
        cls, state_dir: Path, dim: int, codec: str = DEFAULT_CODEC, *, fit_tokens: int = FIT_TOKENS
    ) -> TokenStore:
        """The store in `state_dir`, made with `codec` if missing; a fitted codec is fitted once it
        holds `fit_tokens` tokens. Raises `InvalidQueryError` when it exists with another codec or
        dimension."""
        target = make_codec(codec, dim)
        state_dir.mkdir(parents=True, exist_ok=True)
        db = _connect(state_dir / STORE_FILE)
        meta = _meta(db)
        if "codec" not in meta:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('codec', ?), ('dim', ?)", (codec, str(dim).encode())
            )
            meta = _meta(db)
        have = meta["codec"].decode() if isinstance(meta["codec"], bytes) else str(meta["codec"])
        if have != codec or int(meta["dim"]) != dim:
            db.close()
            raise InvalidQueryError(
                f"the collection keeps token vectors as {have} (dim {int(meta['dim'])}), not {codec} "
                f"(dim {dim}): ingest with --token-vectors {have}, or into a new collection"
            )
        return cls(state_dir / STORE_FILE, db, target, fit_tokens)

    @classmethod
    def open_existing(cls, state_dir: Path) -> TokenStore | None:
        """The store in `state_dir`, or None where ingest kept no token vectors."""
        path = state_dir / STORE_FILE
        if not path.is_file():
            return None
        db = _connect(path)
        meta = _meta(db)
        if "codec" not in meta:
            db.close()
            return None
        codec = meta["codec"].decode() if isinstance(meta["codec"], bytes) else str(meta["codec"])
        return cls(path, db, make_codec(codec, int(meta["dim"])))

    def _load_params(self) -> None:
        meta = _meta(self.db)
        if self.target.needs_fit and meta.get("fitted") == b"1":
            self.target.load({k[6:]: v for k, v in meta.items() if k.startswith("param:")})
            self._fitted = True

    def put(self, chunk_ids: list[str], tokens: list[TokenVectors]) -> None:
        """Write (or replace) the rows of `chunk_ids`, in one transaction. A fitted codec is
        fitted, and the rows kept so far converted, once the store holds `fit_tokens` tokens."""
        rows = [self._row(cid, t) for cid, t in zip(chunk_ids, tokens, strict=True)]
        with transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?, ?)", rows)
        if not self._fitted:
            self._unfitted_tokens += sum(len(t.ids) for t in tokens)
            if self._unfitted_tokens >= self.fit_tokens:
                self.fit()

    def _row(self, cid: str, t: TokenVectors) -> tuple[str, int, int, bytes, bytes, int]:
        ids = t.ids.astype(np.uint16 if t.ids.max(initial=0) < 65536 else np.int32)
        kind = 1 if self._fitted else 0
        return cid, len(t.ids), ids.dtype.itemsize, ids.tobytes(), self.codec.encode(t.vecs), kind

    def fit(self) -> None:
        """Fit the collection's codec on the rows kept so far (at most 4 x `FIT_TOKENS` tokens)
        and convert them to it, in one transaction (`put` calls it once there are enough)."""
        if self._fitted:
            return
        rows = list(self._rows("SELECT id, n, width, ids, codes, kind FROM tokens"))
        if not rows:
            return
        sample = np.concatenate([v for _, _, v in rows])[: max(self.fit_tokens, FIT_TOKENS) * 4]
        self.target.fit(sample)
        self._fitted = True
        with transaction(self.db):
            self.db.executemany(
                "UPDATE tokens SET codes=?, kind=1 WHERE id=?",
                [(self.target.encode(v), cid) for cid, _, v in rows],
            )
            for k, v in self.target.params().items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"param:{k}", v))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('fitted', ?)", (b"1",))

    def _rows(self, sql: str, args: Iterable[object] = ()) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(chunk id, vocabulary ids, vectors in the current codec's space) of the rows `sql` selects."""
        yield from self._decode_rows(self.db.execute(sql, list(args)))

    def _decode_rows(
        self, rows: Iterable[tuple[str, int, int, bytes, bytes, int]]
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for cid, n, width, ids, codes, kind in rows:
            if kind == 1 and not self._fitted:
                self._load_params()  # another process fitted the codec since this one opened it
            codec = self.target if kind == 1 else self._interim
            vecs = codec.decode(codes, n)
            if kind == 0 and self._fitted:
                vecs = self.target.roundtrip(vecs)
            yield cid, np.frombuffer(ids, dtype=np.uint16 if width == 2 else np.int32).astype(np.int32), vecs

    def get(self, chunk_ids: list[str]) -> dict[str, TokenVectors]:
        """The rows of `chunk_ids` that exist, decoded into `codec`'s space (compare them with
        `codec.query(query_vectors)`)."""
        out: dict[str, TokenVectors] = {}
        for i in range(0, len(chunk_ids), 500):  # SQLite's bound-parameter limit
            part = chunk_ids[i : i + 500]
            sql = (
                f"SELECT id, n, width, ids, codes, kind FROM tokens WHERE id IN ({','.join('?' * len(part))})"
            )
            for cid, ids, vecs in self._rows(sql, part):
                out[cid] = TokenVectors(ids, vecs)
        return out

    def present(self, chunk_ids: list[str]) -> set[str]:
        """Which of `chunk_ids` have a row (reads the id index only, not the vectors)."""
        out: set[str] = set()
        for i in range(0, len(chunk_ids), 500):
            part = chunk_ids[i : i + 500]
            sql = f"SELECT id FROM tokens WHERE id IN ({','.join('?' * len(part))})"
            out.update(r[0] for r in self.db.execute(sql, part))
        return out

    def items(self, batch: int = 256) -> Iterator[tuple[str, TokenVectors]]:
        """Every row as (chunk id, `TokenVectors` in `codec`'s space), in the order they were
        first written (what copying a store into another codec needs to fit as ingest did)."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT rowid, id, n, width, ids, codes, kind FROM tokens WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for cid, ids, vecs in self._decode_rows([r[1:] for r in rows]):
                yield cid, TokenVectors(ids, vecs)

    def delete(self, chunk_ids: Iterable[str]) -> None:
        ids = list(chunk_ids)
        with transaction(self.db):
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                self.db.execute(f"DELETE FROM tokens WHERE id IN ({','.join('?' * len(part))})", part)

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM tokens")}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])

    def stats(self) -> StoreStats:
        n, tokens, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(LENGTH(ids) + LENGTH(codes)), 0) FROM tokens"
        ).fetchone()
        return StoreStats(int(n), int(tokens), int(size))

    def close(self) -> None:
        self.db.close()


def _meta(db: sqlite3.Connection) -> dict[str, bytes]:
    return {
        k: (v if isinstance(v, bytes) else str(v).encode())
        for k, v in db.execute("SELECT key, value FROM meta")
    }


def _connect(path: Path) -> sqlite3.Connection:
    return connect(
        path,
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)",
        "CREATE TABLE IF NOT EXISTS tokens"
        " (id TEXT PRIMARY KEY, n INTEGER, width INTEGER, ids BLOB, codes BLOB, kind INTEGER)",
    )
