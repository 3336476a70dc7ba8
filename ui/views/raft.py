"""RAFT builder (placeholder until the page lands on `retrieval.raft`)."""

from __future__ import annotations

import streamlit as st

st.title("RAFT builder")
st.info(
    "Coming next: choose a corpus and options (questions per chunk, distractors, oracle share), "
    "generate RAFT training rows with a progress bar, preview them, and download the exports. "
    "This page is not built yet; the data generator lives in `retrieval.raft`.",
    icon=":material/construction:",
)
