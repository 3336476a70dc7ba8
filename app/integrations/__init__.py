"""Adapters that expose jamba-stack's retrieval to other frameworks: `jamba_stack.app.integrations.langchain`
(a LangChain `BaseRetriever`) and `jamba_stack.app.integrations.llamaindex` (a LlamaIndex `BaseRetriever`).
Each imports its framework on import and, when it is missing, raises `IntegrationUnavailableError`
naming the pip extra to install."""

from __future__ import annotations

from typing import Any

from jamba_runtime.errors import JambaStackError


class IntegrationUnavailableError(JambaStackError, ImportError):
    """The framework an integration adapts is not installed."""

    http_status = 500
    code = "integration_unavailable"


def missing(framework: str, extra: str, error: ImportError) -> IntegrationUnavailableError:
    """The error to raise when `framework` cannot be imported: names the extra to install."""
    return IntegrationUnavailableError(
        f"{framework} is not installed ({error}): pip install 'jamba-stack[{extra}]'"
    )


def hit_metadata(hit: Any) -> dict[str, Any]:
    """A `jamba_stack.retrieval.search.Hit`'s metadata as both integrations expose it: the chunk's stored
    metadata plus `chunk_id`, `doc_id`, `source`, `page` (None when unknown), `score`, `rank`."""
    return {
        **hit.metadata,
        "chunk_id": hit.chunk_id,
        "doc_id": hit.doc_id,
        "source": hit.source,
        "page": hit.metadata.get("page"),
        "score": hit.score,
        "rank": hit.rank,
    }
