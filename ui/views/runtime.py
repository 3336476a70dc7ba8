"""Runtime: the model, device, dtype and context length, and the engine's live numbers (tokens/s,
queue, cache use) from the server's `/metrics`, or from the in-process engine."""

from __future__ import annotations

import streamlit as st

from jamba_stack.chat import ModelInfo, RemoteAPIError, chat_model, is_random_test_model
from jamba_stack.ui import session
from jamba_stack.ui.backend import RANDOM_WEIGHTS_NOTICE, resolve_backend
from jamba_stack.ui.errors import ServerUnavailableError


def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "\u2014" if value is None else pattern.format(value)


def show(info: ModelInfo) -> None:
    if is_random_test_model(info.name) or is_random_test_model(info.root):
        st.warning(RANDOM_WEIGHTS_NOTICE, icon="\u26a0\ufe0f")
    st.caption(f"Status: {info.status}")
    row = st.columns(4)
    row[0].metric("Model", info.name)
    row[1].metric("Device", info.device or "\u2014")
    row[2].metric("dtype", info.dtype or "\u2014")
    row[3].metric("Context length", fmt(info.context_length))
    if info.mode == "server" and info.device is None:
        st.caption("The server's /metrics does not report device and dtype; see its --device / --dtype.")
    m = info.metric
    row = st.columns(4)
    row[0].metric("Tokens/s (last 10 s)", fmt(m("jamba_generation_tokens_per_second"), "{:,.1f}"))
    row[1].metric("Running", fmt(m("jamba_requests_running")))
    row[2].metric("Waiting", fmt(m("jamba_requests_waiting")))
    row[3].metric("Mean time to first token", fmt(m("jamba_mean_time_to_first_token_seconds"), "{:.3f} s"))
    row = st.columns(4)
    used, total = m("jamba_kv_blocks_used"), m("jamba_kv_blocks_total")
    row[0].metric("KV cache use", fmt(m("jamba_kv_cache_usage_ratio"), "{:.1%}"))
    row[1].metric("KV blocks", f"{fmt(used)} / {fmt(total)}")
    row[2].metric(
        "Mamba state slots", f"{fmt(m('jamba_state_slots_used'))} / {fmt(m('jamba_state_slots_total'))}"
    )
    row[3].metric("Prefix snapshots", fmt(m("jamba_prefix_snapshots")))
    row = st.columns(4)
    row[0].metric("Prompt tokens", fmt(m("jamba_prompt_tokens_total")))
    row[1].metric("Generated tokens", fmt(m("jamba_generation_tokens_total")))
    row[2].metric("Preemptions", fmt(m("jamba_preemptions_total")))
    row[3].metric("HTTP requests", fmt(m("jamba_http_requests_total")))


settings = session.settings()
backend = resolve_backend(settings)
st.title("Runtime")
st.caption(
    f"Source: {backend.label}" + (" (GET /health, /v1/models, /metrics)" if backend.mode == "server" else "")
)
st.button("Refresh", key="rt_refresh")

with session.shows_errors("read the runtime's state"):
    if backend.mode == "server":  # a fresh client: the Runtime page never waits on the chat's retries
        try:
            info = chat_model(
                backend.target, api_key=backend.api_key or None, timeout=5.0, max_retries=0
            ).info()
        except RemoteAPIError as exc:
            if exc.code != "connection_error":
                raise
            raise ServerUnavailableError(
                f"cannot reach the API server at {backend.target}: start it with `jamba-stack serve` "
                "(or `jamba-stack up`), or fix JAMBA_STACK_SERVER_URL"
            ) from None
    else:
        info = session.chat_model(settings).info()
    show(info)
