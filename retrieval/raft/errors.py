"""Typed errors of RAFT data generation, training and evaluation."""

from __future__ import annotations

from jamba_stack.retrieval.errors import RetrievalError


class RaftError(RetrievalError):
    """Base of the RAFT errors."""

    code = "raft_error"


class QuestionsFileError(RaftError):
    """A `--questions` file that cannot be read, or a line without `question` or a source."""

    code = "invalid_questions_file"


class CheckpointMismatchError(RaftError):
    """The output folder holds a run made with other settings: resuming would mix two datasets."""

    http_status = 409
    code = "checkpoint_mismatch"


class RaftDataError(RaftError):
    """An export folder without the files `raft eval` / `raft train` read, or an unusable row."""

    code = "invalid_raft_data"


class OptionalDependencyError(RaftError):
    """A package of the `train` extra (datasets, peft) is not installed."""

    http_status = 500
    code = "missing_dependency"
