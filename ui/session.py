"""Streamlit glue shared by the pages: settings, the cached chat model and embedder, the
random-weights notice, and `shows_errors`, which turns a typed error into an `st.error` line.

Settings are read on every rerun (cheap), so a changed `.env` shows after a reload; the model and
the embedder are cached per process (`st.cache_resource`), keyed by what builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.settings import Settings, load_settings
from jamba_stack.chat import ChatModel, is_random_test_model
from jamba_stack.chat import chat_model as open_model
from jamba_stack.retrieval.embeddings import Embedder, make_embedder
from jamba_stack.ui.backend import RANDOM_WEIGHTS_NOTICE, make_chat_model, resolve_backend

MODEL_OVERRIDE_KEY = "model_override"
"""Session key of a checkpoint directory that replaces the configured in-process model for this
browser session (set by the Fine-tune page's "Use for chat")."""


def settings() -> Settings:
    """The app's settings, with this session's model override (an in-process checkpoint) on top;
    the override does nothing while the app talks to a server."""
    s = load_settings()
    override = st.session_state.get(MODEL_OVERRIDE_KEY)
    if override and not s.server_url:
        return s.model_copy(update={"model": str(override)})
    return s


@st.cache_resource(show_spinner="Loading the model...")
def _chat_model(settings_json: str) -> ChatModel:
    return make_chat_model(Settings.model_validate_json(settings_json))


def chat_model(s: Settings) -> ChatModel:
    """The app's `ChatModel` (one per process and settings). Raises the model's load errors."""
    # Keyed by the settings' JSON: Streamlit's cache hashes arguments, and a pydantic model is not
    # hashable.
    return _chat_model(s.model_dump_json())


@st.cache_resource(show_spinner="Loading the embedding model...")
def _embedder(spec: str, data_dir: str) -> Embedder:
    from pathlib import Path

    return make_embedder(spec, cache_dir=Path(data_dir) / "models" / "embeddings")


def embedder(s: Settings) -> Embedder:
    return _embedder(s.embedder, str(s.data_dir))


@st.cache_data(ttl=30, show_spinner=False)
def _remote_is_random(url: str, api_key: str) -> bool | None:
    try:
        info = open_model(url, api_key=api_key or None, timeout=5.0, max_retries=0).info()
    except JambaStackError:
        return None
    return is_random_test_model(info.name) or is_random_test_model(info.root)


def uses_random_model(s: Settings) -> bool | None:
    """Whether answers come from the tiny random test model; None when the server cannot say."""
    backend = resolve_backend(s)
    if backend.mode == "server":
        return _remote_is_random(backend.target, backend.api_key)
    return not s.model or is_random_test_model(s.model)


def random_model_notice(s: Settings) -> None:
    """A warning on the page when the model is the random-weight test model."""
    if uses_random_model(s):
        st.warning(RANDOM_WEIGHTS_NOTICE, icon="\u26a0\ufe0f")


@contextmanager
def shows_errors(action: str) -> Iterator[None]:
    """Show a typed error as one `st.error` line ("Could not <action>: <message>") instead of a
    traceback. Other exceptions still raise: they are bugs, and tests should see them."""
    try:
        yield
    except JambaStackError as exc:
        st.error(f"Could not {action}: {exc}", icon="\u274c")
