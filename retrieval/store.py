"""The Chroma store: an embedded `PersistentClient` in the data dir, or an `HttpClient` when a
Chroma server URL is configured. Telemetry off; Chroma's default embedding function is never
used (it downloads a model at run time): vectors always come from our `Embedder`.

A collection records the embedder that made it (`embedder`, `embedder_dim` in its metadata) and
refuses another. Local state that Chroma does not hold (the manifest of ingested files, the BM25
index, the ingest lock) lives in `state_dir`, beside the collection in the data dir. A collection
made in an embedded store keeps its chunk texts there too (`texts: "local"` in its metadata;
`jamba_stack.retrieval.text_store` says why); one made on a Chroma server, or before texts moved,
keeps them in Chroma. `StoreCollection` reads and writes both the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from jamba_stack.retrieval.errors import (
    CollectionNotFoundError,
    EmbedderMismatchError,
    InvalidQueryError,
    StoreUnavailableError,
)
from jamba_stack.retrieval.text_store import STORE_FILE as TEXTS_FILE
from jamba_stack.retrieval.text_store import TextStore

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
# Chroma caps one add/upsert (`get_max_batch_size`, ~5,000 embedded); smaller batches also keep
# each write short, so a kill loses little.
DEFAULT_WRITE_BATCH = 1000


def check_collection_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise InvalidQueryError(
            f"collection name {name!r} is not valid: use 3-512 characters from a-z A-Z 0-9 . _ -, "
            "starting and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class StoredChunk:
    id: str
    text: str
    metadata: dict[str, Any]
    distance: float = 0.0


class Store:
    """Chroma client plus the local state directory for each collection."""

    def __init__(self, data_dir: str | Path, chroma_url: str = "") -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.data_dir = Path(data_dir)
        self.chroma_url = chroma_url
        settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        try:
            if chroma_url:
                u = urlparse(chroma_url if "://" in chroma_url else f"http://{chroma_url}")
                if not u.hostname:
                    raise StoreUnavailableError(
                        f"Chroma URL {chroma_url!r} has no host: use http://HOST:PORT"
                    )
                ssl = u.scheme == "https"
                self.client = chromadb.HttpClient(
                    host=u.hostname, port=u.port or (443 if ssl else 8000), ssl=ssl, settings=settings
                )
                self.namespace = f"{u.hostname}_{u.port or (443 if ssl else 8000)}"
            else:
                (self.data_dir / "chroma").mkdir(parents=True, exist_ok=True)
                self.client = chromadb.PersistentClient(path=str(self.data_dir / "chroma"), settings=settings)
                self.namespace = "local"
        except StoreUnavailableError:
            raise
        except Exception as e:  # chromadb raises plain ValueError/ConnectionError/httpx errors here
            where = chroma_url or str(self.data_dir / "chroma")
            raise StoreUnavailableError(
                f"cannot open the Chroma store at {where}: {e}. "
                + (
                    "Start the server (chroma run) or unset JAMBA_STACK_CHROMA_URL."
                    if chroma_url
                    else "Check the data dir."
                )
            ) from e
        try:
            self.max_batch = int(self.client.get_max_batch_size())
        except Exception:  # noqa: BLE001 - older servers lack the call; Chroma's documented floor is fine
            self.max_batch = 5000

    def state_dir(self, name: str) -> Path:
        return self.data_dir / "retrieval" / self.namespace / check_collection_name(name)

    def list_collections(self) -> list[str]:
        return sorted(c.name if hasattr(c, "name") else str(c) for c in self.client.list_collections())

    def open(
        self,
        name: str,
        *,
        embedder_name: str | None = None,
        dim: int | None = None,
        backend: str = "",
        create: bool = False,
        texts: str | None = None,
    ) -> StoreCollection:
        """The collection `name`. With `create`, made if missing (recording `embedder_name`/`dim`,
        and where it keeps its chunk texts: `texts` "local" or "chroma", default "local" in an
        embedded store and "chroma" on a server). Raises `CollectionNotFoundError` if missing and
        not `create`, `EmbedderMismatchError` if it was made by another embedder."""
        if texts not in (None, "local", "chroma"):
            raise ValueError(f"texts={texts!r}: use 'local' or 'chroma'")
        check_collection_name(name)
        try:
            existing = name in self.list_collections()
        except Exception as e:  # noqa: BLE001 - a server that went away
            raise StoreUnavailableError(
                f"cannot list collections ({e}): is the Chroma server running?"
            ) from e
        if not existing:
            if not create:
                have = ", ".join(self.list_collections()) or "none"
                raise CollectionNotFoundError(
                    f"collection {name!r} does not exist (collections: {have}): run `jamba-stack ingest PATH --collection {name}` first"
                )
            if embedder_name is None or dim is None:
                raise ValueError("creating a collection needs the embedder's name and dim")
            meta = {
                "embedder": embedder_name,
                "embedder_dim": int(dim),
                "embedder_backend": backend,
                "created_by": "jamba-stack",
                # Embedded: texts beside the collection (Chroma's full-text index on them is most
                # of a write). A server's other clients read them from Chroma.
                "texts": texts or ("chroma" if self.chroma_url else "local"),
            }
            col = self.client.get_or_create_collection(
                name, metadata=meta, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
        else:
            col = self.client.get_collection(name, embedding_function=None)
        sc = StoreCollection(self, col, self.state_dir(name))
        if embedder_name is not None and sc.embedder_name and sc.embedder_name != embedder_name:
            raise EmbedderMismatchError(
                f"collection {name!r} was built with embedder {sc.embedder_name!r} (dim {sc.dim}); this one is "
                f"{embedder_name!r} (dim {dim}): use the same embedder, or ingest into a new collection"
            )
        if dim is not None and sc.dim and sc.dim != dim:
            raise EmbedderMismatchError(
                f"collection {name!r} holds {sc.dim}-dim vectors, the embedder makes {dim}: use the embedder "
                f"{sc.embedder_name!r}, or ingest into a new collection"
            )
        return sc

    def delete_collection(self, name: str) -> None:
        import shutil

        self.client.delete_collection(check_collection_name(name))
        shutil.rmtree(self.state_dir(name), ignore_errors=True)


class StoreCollection:
    """One Chroma collection: batched writes, deletes by id or source, queries, full scans. Its
    chunk texts come from Chroma or from the local `TextStore`, as the collection was made.

    Attributes:
        texts: the local text store, or None where Chroma holds the texts.
    """

    def __init__(self, store: Store, col: Any, state_dir: Path) -> None:
        self.store = store
        self.chroma = col
        self.name: str = col.name
        self.id = str(col.id)
        self.state_dir = state_dir
        meta = col.metadata or {}
        self.embedder_name: str = meta.get("embedder", "")
        self.dim: int = int(meta.get("embedder_dim", 0) or 0)
        self.embedder_backend: str = meta.get("embedder_backend", "")
        self.write_batch = min(DEFAULT_WRITE_BATCH, store.max_batch)
        self.texts: TextStore | None = (
            TextStore.open(state_dir, self.id) if meta.get("texts") == "local" else None
        )

    def count(self) -> int:
        return int(self.chroma.count())

    def upsert(
        self, ids: list[str], embeddings: np.ndarray, texts: list[str], metadatas: list[dict[str, Any]]
    ) -> None:
        """Write chunks (a chunk id already there is replaced). Local texts are written first, so
        a chunk in Chroma always has its text."""
        if self.texts is not None:
            self.texts.put(ids, texts)
        for i in range(0, len(ids), self.write_batch):
            j = i + self.write_batch
            documents = texts[i:j] if self.texts is None else None
            self.chroma.upsert(
                ids=ids[i:j], embeddings=embeddings[i:j], documents=documents, metadatas=metadatas[i:j]
            )

    def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        for i in range(0, len(ids), self.write_batch):
            self.chroma.update(
                ids=ids[i : i + self.write_batch], metadatas=metadatas[i : i + self.write_batch]
            )

    def delete(self, ids: list[str]) -> None:
        for i in range(0, len(ids), self.write_batch):
            self.chroma.delete(ids=ids[i : i + self.write_batch])
        if self.texts is not None:
            self.texts.delete(ids)  # after Chroma: a kill in between leaves rows `sweep` removes

    def ids_where(self, where: dict[str, Any]) -> list[str]:
        return list(self.chroma.get(where=where, include=[])["ids"])

    def delete_source(self, source: str) -> int:
        """Delete every chunk of `source` (a file path); returns how many there were."""
        ids = self.ids_where({"source": source})
        self.delete(ids)
        return len(ids)

    def _include(self) -> list[str]:
        """What to ask Chroma for to get chunks' metadata, and their texts where it holds them."""
        return ["metadatas"] + (["documents"] if self.texts is None else [])

    def _texts(self, ids: list[str], documents: list[str] | None) -> list[str]:
        """The texts of `ids`: Chroma's `documents` where it holds them, else the local rows."""
        if self.texts is None:
            assert documents is not None
            return list(documents)
        rows = self.texts.get(ids)
        if len(rows) < len(set(ids)):
            missing = len(set(ids) - rows.keys())
            raise StoreUnavailableError(
                f"collection {self.name!r}: {missing} chunk text(s) missing from "
                f"{self.state_dir / TEXTS_FILE} (deleted or damaged by hand?): delete the collection "
                "and ingest again"
            )
        return [rows[i] for i in ids]

    def get(self, ids: list[str], *, embeddings: bool = False) -> list[tuple[StoredChunk, np.ndarray | None]]:
        include = self._include() + (["embeddings"] if embeddings else [])
        r = self.chroma.get(ids=ids, include=include)
        embs = r.get("embeddings") if embeddings else None
        texts = self._texts(list(r["ids"]), r.get("documents"))
        out = []
        for k, cid in enumerate(r["ids"]):
            e = np.asarray(embs[k], dtype=np.float32) if embs is not None else None
            out.append((StoredChunk(cid, texts[k], dict(r["metadatas"][k] or {})), e))
        return out

    def query(
        self,
        embedding: np.ndarray,
        n: int,
        where: dict[str, Any] | None = None,
        *,
        embeddings: bool = False,
        documents: bool = True,
    ) -> list[tuple[StoredChunk, np.ndarray | None]]:
        """Nearest chunks to `embedding`, best first, with cosine distance (0 = same direction).
        `documents=False`: ids and distances only (text "" and no metadata), about half the time
        of a query that reads them: `get` the few that are kept."""
        include = (self._include() if documents else []) + ["distances"]
        include += ["embeddings"] if embeddings else []
        r = self.chroma.query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32)],
            n_results=n,
            where=where or None,
            include=include,
        )
        ids = list(r["ids"][0])
        embs = r.get("embeddings")[0] if embeddings else None
        texts = self._texts(ids, (r.get("documents") or [None])[0]) if documents else [""] * len(ids)
        out = []
        for k, cid in enumerate(ids):
            e = np.asarray(embs[k], dtype=np.float32) if embs is not None else None
            meta = dict(r["metadatas"][0][k] or {}) if documents else {}
            chunk = StoredChunk(cid, texts[k], meta, float(r["distances"][0][k]))
            out.append((chunk, e))
        return out

    def iter_all(self, page: int = 5000) -> Iterator[tuple[list[str], list[str], list[dict[str, Any]]]]:
        """Every chunk, a page at a time: (ids, texts, metadatas)."""
        offset = 0
        while True:
            r = self.chroma.get(include=self._include(), limit=page, offset=offset)
            if not r["ids"]:
                return
            ids = list(r["ids"])
            yield ids, self._texts(ids, r.get("documents")), [dict(m or {}) for m in r["metadatas"]]
            offset += len(ids)
