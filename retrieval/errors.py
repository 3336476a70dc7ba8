"""Typed errors of the retrieval pipeline. Each carries an HTTP status and a code (the server maps
them to OpenAI-style error bodies) and a message that names the bad value and the fix."""

from __future__ import annotations

from jamba_runtime.errors import JambaStackError


class RetrievalError(JambaStackError):
    """Base of the retrieval errors."""

    http_status = 400
    code = "retrieval_error"


class PathNotAllowedError(RetrievalError):
    """A path to ingest lies outside the allowed root (or escapes it through `..` or a symlink)."""

    http_status = 403
    code = "path_not_allowed"


class SourceNotFoundError(RetrievalError):
    """A path to ingest does not exist."""

    http_status = 404
    code = "source_not_found"


class CollectionNotFoundError(RetrievalError):
    """A search named a collection that was never ingested."""

    http_status = 404
    code = "collection_not_found"


class EmbedderMismatchError(RetrievalError):
    """A collection was built by another embedder (its vectors live in another space)."""

    http_status = 409
    code = "embedder_mismatch"


class QueryTooLongError(RetrievalError):
    """A query longer than the configured limit."""

    http_status = 400
    code = "query_too_long"


class InvalidQueryError(RetrievalError):
    """An empty query, a bad k, a malformed filter or queries file."""

    http_status = 400
    code = "invalid_query"


class StoreUnavailableError(RetrievalError):
    """The Chroma server cannot be reached, or the store directory cannot be used."""

    http_status = 503
    code = "store_unavailable"


class EmbedderUnavailableError(RetrievalError):
    """The embedding model files (or the package that ships them) are missing."""

    http_status = 500
    code = "embedder_unavailable"


class IngestLockedError(RetrievalError):
    """Another ingest into the same collection is running."""

    http_status = 409
    code = "ingest_in_progress"


class RerankerUnavailableError(RetrievalError):
    """A reranker model cannot be loaded (missing folder, not in the local cache, no package)."""

    http_status = 500
    code = "reranker_unavailable"


class EmptyCollectionError(RetrievalError):
    """A collection exists but holds no chunks, so there is nothing to answer from."""

    http_status = 404
    code = "collection_empty"


class EmptyQuestionError(InvalidQueryError):
    """A question that is empty or only whitespace."""

    code = "empty_question"
