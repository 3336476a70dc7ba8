"""Long-term memory: facts an agent keeps across sessions in a Chroma collection (through
`jamba_stack.retrieval.store`), recalled by meaning with the retrieval embedder.

    >>> memory = LongTermMemory("agent-memory", data_dir="data", namespace="alice")
    >>> memory.remember("Alice prefers window seats.")
    >>> memory.recall("where does Alice like to sit?")[0]["text"]
    >>> agent = Agent(..., tools=[*memory.tools(), ...])     # `remember` and `recall` tools

A fact's id is a hash of its namespace and text, so remembering it again changes nothing.
`namespace` keeps several users' (or agents') facts apart in one collection.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from jamba_stack.agents.errors import AgentConfigError
from jamba_stack.agents.tool import Tool


class LongTermMemory:
    """Facts in the Chroma collection `collection` (created on first use).

    Args:
        collection: the collection's name. data_dir / chroma_url: as `jamba_stack.retrieval.store.Store`.
        embedder: a `jamba_stack.retrieval.embeddings.Embedder` or a spec for `make_embedder` (default the
            project's MiniLM). namespace: whose facts these are ("" for everyone's).

    Raises `StoreUnavailableError`, `EmbedderMismatchError` (the collection was made with another
    embedder) and `InvalidQueryError` (a bad collection name) from `retrieval`.
    """

    def __init__(
        self,
        collection: str = "agent-memory",
        *,
        data_dir: str | Path,
        chroma_url: str = "",
        embedder: Any = None,
        namespace: str = "",
    ) -> None:
        from jamba_stack.retrieval.embeddings import Embedder, make_embedder
        from jamba_stack.retrieval.store import Store

        if not isinstance(embedder, Embedder):
            embedder = make_embedder(embedder or "minilm", cache_dir=Path(data_dir) / "models" / "embeddings")
        self.embedder = embedder
        self.namespace = namespace
        store = Store(data_dir, chroma_url)
        self.collection = store.open(
            collection,
            embedder_name=embedder.name,
            dim=embedder.dim,
            backend=getattr(embedder, "backend", ""),
            create=True,
        )

    def remember(self, text: str, metadata: dict[str, Any] | None = None) -> str:
        """Store a fact; returns its id. Raises `AgentConfigError` for empty text."""
        if not isinstance(text, str) or not text.strip():
            raise AgentConfigError("cannot remember an empty text: pass the fact to keep")
        text = text.strip()
        fact_id = hashlib.sha256(f"{self.namespace}\x00{text}".encode()).hexdigest()[:32]
        meta = {**(metadata or {}), "namespace": self.namespace, "created": time.time(), "kind": "memory"}
        vectors = self.embedder.embed_documents([text])
        self.collection.upsert([fact_id], vectors, [text], [meta])
        return fact_id

    def recall(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The `k` facts of this namespace nearest to `query`, best first:
        [{"id", "text", "score" (cosine similarity), "metadata"}]."""
        if self.collection.count() == 0 or not query.strip():
            return []
        hits = self.collection.query(
            self.embedder.embed_query(query.strip()), max(1, k), {"namespace": self.namespace}
        )
        return [
            {"id": c.id, "text": c.text, "score": round(1.0 - c.distance, 4), "metadata": c.metadata}
            for c, _ in hits
        ]

    def forget(self, fact_id: str) -> None:
        """Delete a fact by id (nothing if it is not there)."""
        self.collection.delete([fact_id])

    def tools(self) -> list[Tool]:
        """`remember(fact)` and `recall(query, k)` as tools for an agent."""

        def remember(fact: str) -> str:
            """Keep a fact for later conversations.

            Args:
                fact: one self-contained sentence.
            """
            self.remember(fact)
            return "remembered"

        def recall(query: str, k: int = 3) -> list[str]:
            """Look up facts kept from earlier conversations.

            Args:
                query: what to look for.
                k: how many facts (1-10).
            """
            return [h["text"] for h in self.recall(query, max(1, min(k, 10)))]

        return [Tool.from_function(remember), Tool.from_function(recall)]
