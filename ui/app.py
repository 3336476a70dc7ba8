"""The jamba-stack web app: `streamlit run ui/app.py` (or `jamba-stack up`).

Pages live in `ui/views/` and are wired here with `st.navigation`. What the app talks to comes
from settings (`jamba_stack.app.settings.Settings`): `JAMBA_STACK_SERVER_URL` for an API server,
else the model in this process; `JAMBA_STACK_DATA_DIR`; `JAMBA_STACK_CHROMA_URL`. A bad setting
shows one error and nothing else.

Private by design: the favicon is a file of this package (Streamlit would fetch an emoji or icon
favicon from a fonts host), and `.streamlit/config.toml` at the repository root keeps the
stand-alone `streamlit run` on loopback, without usage statistics, with a Host allow-list.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.logs import quiet_library_logs
from jamba_stack.ui import session
from jamba_stack.ui.backend import resolve_backend

HERE = Path(__file__).parent
VIEWS = HERE / "views"
FAVICON = HERE / "assets" / "favicon.png"

quiet_library_logs()
st.set_page_config(page_title="jamba-stack", page_icon=str(FAVICON), layout="wide")

try:
    settings = session.settings()
except JambaStackError as exc:  # a bad JAMBA_STACK_* value or .env: every page needs the settings
    st.error(f"Could not read the settings: {exc}", icon="\u274c")
    st.stop()

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

backend = resolve_backend(settings)
with st.sidebar:
    st.caption(f"Model: {backend.label}")
    st.caption(f"Data dir: {settings.data_dir}")
    st.caption(f"Chroma: {settings.chroma_url or 'embedded, in the data dir'}")

nav.run()
