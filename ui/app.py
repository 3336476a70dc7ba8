"""The jamba-stack web app: `streamlit run ui/app.py` (or `jamba-stack up`).

Pages live in `ui/views/` and are wired here with `st.navigation`. What the app talks to comes
from settings (`jamba_stack.ui.backend.Settings`): `JAMBA_STACK_SERVER_URL` for an API server, else the
model in this process; `JAMBA_STACK_DATA_DIR`; `JAMBA_STACK_CHROMA_URL`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from jamba_stack.ui import session
from jamba_stack.ui.backend import resolve_backend

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="jamba-stack", page_icon=":material/hub:", layout="wide")

pages = {
    "Use": [
        st.Page(VIEWS / "chat.py", title="Chat with documents", icon=":material/forum:", default=True),
        st.Page(VIEWS / "documents.py", title="Documents", icon=":material/description:"),
        st.Page(VIEWS / "agents.py", title="Agents", icon=":material/smart_toy:"),
    ],
    "Build": [
        st.Page(VIEWS / "playground.py", title="Playground", icon=":material/data_object:"),
        st.Page(VIEWS / "raft.py", title="RAFT builder", icon=":material/dataset:"),
        st.Page(VIEWS / "finetune.py", title="Fine-tune", icon=":material/tune:"),
    ],
    "Operate": [st.Page(VIEWS / "runtime.py", title="Runtime", icon=":material/monitoring:")],
}
nav = st.navigation(pages)

settings = session.settings()
backend = resolve_backend(settings)
with st.sidebar:
    st.caption(f"Model: {backend.label}")
    st.caption(f"Data dir: {settings.data_dir}")
    st.caption(f"Chroma: {settings.chroma_url or 'embedded, in the data dir'}")

nav.run()
