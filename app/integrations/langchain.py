"""LangChain over jamba-stack's hybrid search: `JambaStackRetriever`, a `BaseRetriever` returning
`Document`s (page_content = the chunk; metadata: source, page, chunk_id, doc_id, score, rank and
the chunk's stored metadata), plus `format_documents` for LCEL prompts.

    >>> retriever = JambaStackRetriever.from_collection("handbook", data_dir="data", k=4)
    >>> docs = retriever.invoke("How do I rotate the API key?")
    >>> chain = {"context": retriever | format_documents, "question": RunnablePassthrough()} | prompt | llm

Needs langchain-core: `pip install 'jamba-stack[langchain]'`. For a chat model, point
`langchain_openai.ChatOpenAI(base_url="http://HOST:PORT/v1")` at `jamba-stack serve`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jamba_stack.app.integrations import hit_metadata, missing

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda
    from langchain_core.runnables.config import run_in_executor
    from pydantic import ConfigDict
except ImportError as e:  # pragma: no cover - depends on the environment
    raise missing("langchain-core", "langchain", e) from e

from jamba_stack.retrieval.search import Retriever, open_retriever

__all__ = ["JambaStackRetriever", "format_documents", "to_jamba_documents"]


class JambaStackRetriever(BaseRetriever):
    """Hybrid search (dense + BM25, fused; optional rerank) over one jamba-stack collection.

    Fields: `retriever` (a `jamba_stack.retrieval.search.Retriever`), `k` (hits per query), `mode` (hybrid,
    dense or bm25), `filters` (Chroma `where` syntax, applied to both retrievers), `reranker` (a
    `jamba_stack.retrieval.rerank.Reranker` applied to max(k, 30) candidates, or None: the
    retriever's own default, the rerank `search` runs). `invoke(query, k=...,
    mode=..., filters=...)` overrides the fields for one call, as LangChain's retrievers do. `invoke` raises
    what `Retriever.search` raises (`InvalidQueryError`, `QueryTooLongError`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Retriever
    k: int = 4
    mode: str = "hybrid"
    filters: dict[str, Any] | None = None
    reranker: Any = None

    @classmethod
    def from_collection(
        cls,
        collection: str,
        *,
        data_dir: str | Path,
        chroma_url: str = "",
        embedder: str | None = None,
        **fields: Any,
    ) -> JambaStackRetriever:
        """Open `collection` (as `jamba_stack.retrieval.search.open_retriever`; raises `CollectionNotFoundError`,
        `EmbedderMismatchError`) and wrap it; `fields` are this class's (k, mode, filters, reranker)."""
        r = open_retriever(collection, data_dir=data_dir, chroma_url=chroma_url, embedder=embedder)
        return cls(retriever=r, **fields)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[Document]:
        k = self.k if k is None else k
        mode = mode or self.mode
        filters = self.filters if filters is None else filters
        # reranker None: the retriever's own default (the rerank `search` runs), so both agree
        hits = self.retriever.search(query, k, mode=mode, filters=filters, rerank=self.reranker)
        return [Document(page_content=h.text, metadata=hit_metadata(h), id=h.chunk_id) for h in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[Document]:
        # The search is synchronous (Chroma, BM25, the embedder): run it off the event loop.
        return await run_in_executor(
            None,
            self._get_relevant_documents,
            query,
            run_manager=run_manager.get_sync(),
            k=k,
            mode=mode,
            filters=filters,
        )


def _format(docs: Sequence[Document]) -> str:
    parts = []
    for n, d in enumerate(docs, start=1):
        src = Path(str(d.metadata.get("source", ""))).name
        page = d.metadata.get("page")
        head = f"[{n}] {src}" + (f" p.{page}" if page is not None else "")
        parts.append(f"{head}\n{d.page_content}")
    return "\n\n".join(parts)


format_documents = RunnableLambda(_format, name="format_documents")
"""A runnable: Documents -> one string, each "[n] file p.P" then its text, numbered from 1 (cite as [n])."""


def to_jamba_documents(docs: Sequence[Document]) -> list[dict[str, Any]]:
    """LangChain Documents as Jamba's documents (`jamba_stack.chat.ChatModel`'s `documents=` option):
    {"id", "content", "metadata": {citation "[n]", source file, page}}."""
    out = []
    for n, d in enumerate(docs, start=1):
        meta: dict[str, Any] = {"citation": f"[{n}]", "source": Path(str(d.metadata.get("source", ""))).name}
        if d.metadata.get("page") is not None:
            meta["page"] = d.metadata["page"]
        out.append({"id": d.id or str(n), "content": d.page_content, "metadata": meta})
    return out
