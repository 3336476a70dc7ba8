"""BM25 over chunk texts (bm25s, English stopwords + Snowball stemming through PyStemmer), with the
chunks' metadata kept as columns so Chroma-style `where` filters apply to BM25 hits too.

Persisted beside the collection in a versioned folder (`bm25/<generation>/`) named by an
atomically replaced `bm25/CURRENT` file: a reader sees the old index or the new one, never half of
one. It records the Chroma collection id and the chunk count it was built from, which is how the
pipeline notices an index out of sync (a crash mid-ingest) and rebuilds it from Chroma.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from jamba_stack.retrieval.errors import InvalidQueryError

BM25_PARAMS = {"k1": 0.9, "b": 0.4, "method": "lucene"}
"""Tuned on the SciFact train split over chunks (bench/retrieval/scifact.py --tune): nDCG@10 0.690 vs
0.689 for k1=1.2 b=0.75; also Anserini's BEIR defaults."""


def _stemmer():  # noqa: ANN202 - Stemmer.Stemmer
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: list[str], stemmer: Any = None) -> list[list[str]]:
    """Each text's BM25 terms (bm25s: lowercase words, English stopwords, Snowball stems)."""
    return _bm25s_tokenize(texts, stemmer, return_ids=False)


def tokenize_ids(texts: list[str]) -> Any:
    """`tokenize` as ids and their vocabulary (a `bm25s.tokenization.Tokenized`), which
    `bm25s.BM25.index` takes without converting strings: 1.80 -> 1.55 s to tokenize and index
    SciFact twice over (10,366 texts) on 2 cores, the same index."""
    return _bm25s_tokenize(texts, None, return_ids=True)


def _bm25s_tokenize(texts: list[str], stemmer: Any, return_ids: bool) -> Any:
    import bm25s

    return bm25s.tokenize(
        texts, stopwords="en", stemmer=stemmer or _stemmer(), show_progress=False, return_ids=return_ids
    )


class BM25Index:
    """A bm25s index over chunks: `ids[i]` is the chunk of row i, `columns` its metadata."""

    def __init__(
        self, retriever: Any, ids: list[str], columns: dict[str, list[Any]], info: dict[str, Any]
    ) -> None:
        self.retriever = retriever
        self.ids = ids
        self.columns = columns
        self.info = info
        self._stemmer = _stemmer()
        self._np_columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls, ids: list[str], texts: list[str], metadatas: list[dict[str, Any]], **info: Any
    ) -> BM25Index:
        import bm25s

        params = dict(BM25_PARAMS)
        retriever = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
        if texts:
            retriever.index(tokenize_ids(texts), show_progress=False)
        keys = sorted({k for m in metadatas for k in m})
        columns = {k: [m.get(k) for m in metadatas] for k in keys}
        return cls(retriever, list(ids), columns, info | {"count": len(ids), "params": params})

    def save(self, directory: Path) -> None:
        """Write a new generation and switch `CURRENT` to it atomically; older generations go."""
        directory.mkdir(parents=True, exist_ok=True)
        gen = f"g{time.time_ns()}"
        tmp = directory / f".{gen}.tmp"
        tmp.mkdir()
        if self.ids:
            self.retriever.save(str(tmp / "bm25s"))
        (tmp / "ids.json").write_text(json.dumps(self.ids))
        (tmp / "columns.json").write_text(json.dumps(self.columns))
        (tmp / "info.json").write_text(json.dumps(self.info))
        os.replace(tmp, directory / gen)
        cur_tmp = directory / f".CURRENT.{gen}"
        cur_tmp.write_text(gen)
        os.replace(cur_tmp, directory / "CURRENT")
        for old in directory.iterdir():
            if old.name not in (gen, "CURRENT"):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path) -> BM25Index | None:
        """The current generation, or None if there is none (or it is unreadable)."""
        import bm25s

        try:
            gen = directory / (directory / "CURRENT").read_text().strip()
            ids = json.loads((gen / "ids.json").read_text())
            columns = json.loads((gen / "columns.json").read_text())
            info = json.loads((gen / "info.json").read_text())
            retriever = bm25s.BM25.load(str(gen / "bm25s")) if ids else bm25s.BM25()
        except (OSError, ValueError):
            return None
        return cls(retriever, ids, columns, info)

    def _column(self, key: str) -> np.ndarray:
        if key not in self._np_columns:
            self._np_columns[key] = np.array(self.columns.get(key, [None] * len(self.ids)), dtype=object)
        return self._np_columns[key]

    def mask(self, where: dict[str, Any] | None) -> np.ndarray | None:
        """Boolean row mask for a Chroma-style `where` filter, or None for no filter."""
        if not where:
            return None
        return where_mask(where, self._column, len(self.ids))

    def search(self, query: str, k: int, where: dict[str, Any] | None = None) -> list[tuple[str, float]]:
        """Up to `k` (chunk id, score) pairs with a positive score, best first."""
        if not self.ids or k <= 0:
            return []
        q = tokenize([query], self._stemmer)[0]
        vocab = self.retriever.vocab_dict
        q = [t for t in q if t in vocab]
        if not q:
            return []
        scores = self.retriever.get_scores(q)  # (n_chunks,)
        m = self.mask(where)
        if m is not None:
            scores = np.where(m, scores, 0.0)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]


_CMP = {
    "$eq": lambda c, v: c == v,
    "$ne": lambda c, v: c != v,
    "$gt": lambda c, v: c > v,
    "$gte": lambda c, v: c >= v,
    "$lt": lambda c, v: c < v,
    "$lte": lambda c, v: c <= v,
}


def _compare(col: np.ndarray, op: str, value: Any) -> np.ndarray:
    present = np.array([x is not None for x in col], dtype=bool)
    if op in ("$in", "$nin"):
        if not isinstance(value, list):
            raise InvalidQueryError(f"filter operator {op} needs a list, got {value!r}")
        hit = np.array([x in value for x in col], dtype=bool)
        return hit & present if op == "$in" else ~hit | ~present
    if op not in _CMP:
        raise InvalidQueryError(
            f"unknown filter operator {op!r}: use $eq $ne $gt $gte $lt $lte $in $nin $and $or"
        )
    if op in ("$gt", "$gte", "$lt", "$lte") and not isinstance(value, int | float):
        raise InvalidQueryError(f"filter operator {op} needs a number, got {value!r}")
    out = np.zeros(len(col), dtype=bool)
    for i, x in enumerate(col):
        if x is None:
            out[i] = op == "$ne"
        elif isinstance(value, int | float) and not isinstance(value, bool) and isinstance(x, int | float):
            out[i] = bool(_CMP[op](x, value))
        elif op in ("$eq", "$ne"):
            out[i] = bool(_CMP[op](x, value))
    return out


def where_mask(where: dict[str, Any], column: Any, n: int) -> np.ndarray:
    """Evaluate a Chroma `where` filter (`{"source": "a.md"}`, `{"page": {"$gte": 2}}`,
    `{"$and": [...]}`, `{"$or": [...]}`) over metadata columns; `column(key)` gives a key's values."""
    if not isinstance(where, dict) or not where:
        raise InvalidQueryError(f"a filter must be a non-empty JSON object, got {where!r}")
    masks = []
    for key, cond in where.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise InvalidQueryError(f"{key} needs a non-empty list of filters")
            parts = [where_mask(c, column, n) for c in cond]
            masks.append(np.logical_and.reduce(parts) if key == "$and" else np.logical_or.reduce(parts))
        elif key.startswith("$"):
            raise InvalidQueryError(f"unknown filter operator {key!r} at the top level: use $and or $or")
        elif isinstance(cond, dict):
            if len(cond) != 1:
                raise InvalidQueryError(f"filter on {key!r} needs exactly one operator, got {cond!r}")
            ((op, value),) = cond.items()
            masks.append(_compare(column(key), op, value))
        else:
            masks.append(_compare(column(key), "$eq", cond))
    return np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]
