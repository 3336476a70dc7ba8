"""Fine-tune (placeholder until LoRA training and evaluation have a page)."""

from __future__ import annotations

import streamlit as st

st.title("Fine-tune")
st.info(
    "Coming next: start LoRA training on a generated RAFT set (base model, LoRA rank, steps) with a "
    "live loss chart, then the evaluation table (base + RAG vs fine-tuned + RAG at top-k 3/5/7) as a "
    "chart, and list adapters to load for chat. This page is not built yet.",
    icon=":material/construction:",
)
