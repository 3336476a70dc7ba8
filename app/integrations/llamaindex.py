"""LlamaIndex over jamba-stack's hybrid search: `JambaStackLlamaRetriever`, a LlamaIndex
`BaseRetriever` returning `NodeWithScore`s (a `TextNode` per chunk, id = chunk id; metadata:
source, page, chunk_id, doc_id, score, rank and the chunk's stored metadata).

    >>> retriever = JambaStackLlamaRetriever.from_collection("handbook", data_dir="data", k=4)
    >>> nodes = retriever.retrieve("How do I rotate the API key?")
    >>> engine = RetrieverQueryEngine.from_args(retriever, llm=OpenAILike(api_base=".../v1", ...))

Needs llama-index-core: `pip install 'jamba-stack[llamaindex]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jamba_stack.app.integrations import hit_metadata, missing

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - depends on the environment
    raise missing("llama-index-core", "llamaindex", e) from e

from jamba_stack.retrieval.search import Retriever, open_retriever

__all__ = ["JambaStackLlamaRetriever"]


class JambaStackLlamaRetriever(BaseRetriever):
    """Hybrid search (dense + BM25, fused; optional rerank) over one jamba-stack collection.

    `retriever`: a `jamba_stack.retrieval.search.Retriever`; `k`: hits per query; `mode`: hybrid, dense or
    bm25; `filters`: Chroma `where` syntax; `reranker`: a `jamba_stack.retrieval.rerank.Reranker`, or None for the
    retriever's own default (the rerank `search` runs).
    `retrieve` raises what `Retriever.search` raises (`InvalidQueryError`, `QueryTooLongError`)."""

    def __init__(
        self,
        retriever: Retriever,
        *,
        k: int = 4,
        mode: str = "hybrid",
        filters: dict[str, Any] | None = None,
        reranker: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retriever = retriever
        self.k = k
        self.mode = mode
        self.filters = filters
        self.reranker = reranker

    @classmethod
    def from_collection(
        cls,
        collection: str,
        *,
        data_dir: str | Path,
        chroma_url: str = "",
        embedder: str | None = None,
        **kwargs: Any,
    ) -> JambaStackLlamaRetriever:
        """Open `collection` (as `jamba_stack.retrieval.search.open_retriever`; raises `CollectionNotFoundError`,
        `EmbedderMismatchError`) and wrap it; `kwargs` go to `__init__` (k, mode, filters, reranker)."""
        r = open_retriever(collection, data_dir=data_dir, chroma_url=chroma_url, embedder=embedder)
        return cls(r, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        # reranker None: the retriever's own default (the rerank `search` runs), so both agree
        hits = self.retriever.search(
            query, self.k, mode=self.mode, filters=self.filters, rerank=self.reranker
        )
        return [
            NodeWithScore(node=TextNode(id_=h.chunk_id, text=h.text, metadata=hit_metadata(h)), score=h.score)
            for h in hits
        ]
