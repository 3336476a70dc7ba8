"""Chat with documents: pick a collection, ask, watch the answer stream in, open each citation
[n] to its chunk, file and page. The conversation is kept per browser session and collection.

Each question is answered on its own (`jamba_stack.retrieval.rag.ask_stream`: retrieval, then the model with
the chunks as documents); earlier turns are shown, not sent to the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from jamba_stack.retrieval.rag import Answer, ask_stream
from jamba_stack.retrieval.search import open_retriever
from jamba_stack.ui import session
from jamba_stack.ui.documents import list_collections

HISTORY_KEY = "chat_history"


def render_citations(citations: list[dict[str, Any]], uncited: bool) -> None:
    """One expander per citation: `[n] file, page p`, opening to the chunk's text and source."""
    if not citations:
        return
    if uncited:
        st.caption("The answer cites no document by number; these are the passages it was given.")
    for c in citations:
        page = f", page {c['page']}" if c.get("page") is not None else ""
        with st.expander(f"[{c['n']}] {Path(c['source']).name or c['doc_id']}{page}"):
            st.caption(
                f"Source: {c['source']} \u00b7 chunk {c['chunk_id'][:16]} \u00b7 score {c['score']:.3f}"
            )
            st.text(c["text"])


EMPTY_ANSWER = "The model returned an empty answer"


def empty_answer_note(finish_reason: str | None) -> str:
    """What the page says instead of an empty bubble."""
    why = {
        "length": ": it stopped at the token limit before writing any text (raise Max answer tokens)",
        "stop": ": it ended its turn at once (a random-weight test model often does; try another question)",
    }.get(finish_reason or "", f" (finish_reason {finish_reason})" if finish_reason else "")
    return EMPTY_ANSWER + why + "."


def render_history(history: list[dict[str, Any]]) -> None:
    for turn in history:
        with st.chat_message(turn["role"]):
            if turn["role"] == "assistant" and not turn["content"].strip():
                st.info(empty_answer_note(turn.get("finish_reason")))
            else:
                st.markdown(turn["content"])
            if turn["role"] == "assistant":
                render_citations(turn.get("citations", []), turn.get("uncited", False))


def answer(settings: Any, collection: str, question: str, k: int, max_tokens: int) -> dict[str, Any] | None:
    """Stream the answer into the page; returns the assistant turn for the history, or None when
    an error was shown."""
    with session.shows_errors("answer the question"):
        retriever = open_retriever(
            collection,
            data_dir=settings.data_dir,
            chroma_url=settings.chroma_url,
            embedder=session.embedder(settings),
        )
        model = session.chat_model(settings)
        events = ask_stream(question, retriever, model, k=k, max_tokens=max_tokens)
        result: list[Answer] = []

        def text_pieces():  # noqa: ANN202 - a generator of str for st.write_stream
            for event in events:
                if isinstance(event, Answer):
                    result.append(event)
                else:
                    yield event

        st.write_stream(text_pieces())
        final = result[0]
        if not final.text.strip():
            st.info(empty_answer_note(final.finish_reason))
        citations = [{**c.to_json(), "doc_id": c.doc_id} for c in final.citations]
        render_citations(citations, final.uncited)
        if final.finish_reason == "length" and final.text.strip():
            st.caption("The answer stopped at the token limit: raise Max answer tokens for a longer one.")
        return {
            "role": "assistant",
            "content": final.text,
            "citations": citations,
            "uncited": final.uncited,
            "finish_reason": final.finish_reason,
        }
    return None


settings = session.settings()
st.title("Chat with documents")
session.random_model_notice(settings)

names: list[str] = []
with session.shows_errors("list the collections"):
    names = [c.name for c in list_collections(settings)]
if not names:
    st.info("No collections yet: upload files on the Documents page, then come back to ask about them.")
    st.stop()

top = st.columns([3, 1, 1, 1])
collection = top[0].selectbox("Collection", names, key="chat_collection")
k = top[1].number_input("Passages", min_value=1, max_value=20, value=5, key="chat_k")
max_tokens = top[2].number_input("Max answer tokens", min_value=16, max_value=4096, value=256, key="chat_max")
histories: dict[str, list[dict[str, Any]]] = st.session_state.setdefault(HISTORY_KEY, {})
history = histories.setdefault(collection, [])
if top[3].button("Clear chat", disabled=not history):
    history.clear()

render_history(history)
question = st.chat_input(f"Ask about {collection}")
if question is not None:
    if not question.strip():
        st.error("Could not answer the question: it is empty. Type a question first.", icon="\u274c")
    else:
        with st.chat_message("user"):
            st.markdown(question)
        with st.chat_message("assistant"):
            turn = answer(settings, collection, question, int(k), int(max_tokens))
        if turn is not None:
            history.append({"role": "user", "content": question})
            history.append(turn)
