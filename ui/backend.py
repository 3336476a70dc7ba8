"""What the web app talks to, resolved from settings: an API server (`JAMBA_STACK_SERVER_URL`) or
an in-process model (`JAMBA_STACK_MODEL`, else the tiny random model in the data dir), the data
dir, and Chroma (embedded in the data dir, or `JAMBA_STACK_CHROMA_URL`).

No Streamlit here: pages cache what these functions build (`jamba_stack.ui.session`), tests call
them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jamba_stack.app.settings import Settings
from jamba_stack.chat import ChatModel, chat_model, resolve_model_path
from jamba_stack.retrieval.raft.pipeline import is_finished_set

Mode = Literal["server", "in-process"]

RANDOM_WEIGHTS_NOTICE = (
    "Answers come from a **random-weight test model** (the tiny Jamba made for tests): its text is "
    "gibberish. Set JAMBA_STACK_MODEL to a real checkpoint (or start `jamba-stack up --model DIR`) "
    "for real answers."
)


def list_raft_sets(settings: Settings) -> list[Path]:
    """The RAFT builder's finished sets (exports and `summary.json`; a run that failed or is still
    running is left out), newest first."""
    root = settings.raft_sets_dir
    if not root.is_dir():
        return []
    sets = [p for p in root.iterdir() if is_finished_set(p)]
    return sorted(sets, key=lambda p: p.stat().st_mtime, reverse=True)


@dataclass(frozen=True)
class Backend:
    """Where answers come from. `target`: the server URL or the model path / hub id."""

    mode: Mode
    target: str
    api_key: str = ""

    @property
    def label(self) -> str:
        return f"server {self.target}" if self.mode == "server" else f"in-process model {self.target}"


def resolve_backend(settings: Settings) -> Backend:
    """The server when `server_url` is set, else the configured model, else the tiny model in the
    data dir (its path; `local_model_path` makes it on first use)."""
    if settings.server_url:
        url = settings.server_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        return Backend("server", url, settings.api_key)
    return Backend("in-process", settings.model or str(settings.tiny_model_dir))


def local_model_path(settings: Settings) -> str:
    """The in-process model: the configured one, or the tiny model (written on first use)."""
    return resolve_model_path(settings.model, settings.tiny_model_dir, notice=None)


def make_chat_model(settings: Settings) -> ChatModel:
    """The `ChatModel` for the resolved backend. In-process, this loads the model (seconds to
    minutes): cache it. Raises `ModelNotFoundError` / `CheckpointError` for a bad model."""
    backend = resolve_backend(settings)
    if backend.mode == "server":
        # No retries: a page should say at once that the server is down, not after backoffs.
        return chat_model(
            backend.target, api_key=backend.api_key or None, timeout=settings.request_timeout_s, max_retries=0
        )
    return chat_model(local_model_path(settings), device=settings.device, dtype=settings.dtype, notice=None)
