"""`Hit`: one search result, as search, rerank, RAG and the integrations pass it on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result. `score` is the fused score (hybrid), cosine similarity (dense), BM25
    score (bm25) or the reranker's score (rerank): comparable within one result list only."""

    rank: int
    chunk_id: str
    doc_id: str
    source: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source": self.source,
            "score": round(self.score, 6),
            "text": self.text,
            "metadata": self.metadata,
        }
