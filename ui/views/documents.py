"""Documents: upload files into a collection (size limit, allowed types), ingest them with a
progress bar, list collections and their sources, delete a source."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from jamba_runtime.errors import JambaStackError
from jamba_stack.retrieval.store import check_collection_name
from jamba_stack.ui import session
from jamba_stack.ui.documents import (
    ALLOWED_SUFFIXES,
    delete_source,
    delete_stray_upload,
    ingest_files,
    list_collections,
    save_upload,
    stray_uploads,
    upload_outcomes,
)

settings = session.settings()
st.title("Documents")
if flash := st.session_state.pop("doc_flash", None):
    st.success(flash)

collections = []
with session.shows_errors("list the collections"):
    collections = list_collections(settings)

# ---- upload and ingest -----------------------------------------------------------------------------
st.subheader("Add files")
existing = [c.name for c in collections]
collection = st.text_input(
    "Collection",
    value=existing[0] if existing else "docs",
    help="An existing collection, or a new name (3-512 characters: letters, digits, . _ -).",
    key="doc_collection",
)
uploads = st.file_uploader(
    "Files",
    accept_multiple_files=True,
    help=f"Types: {' '.join(ALLOWED_SUFFIXES)}; at most {settings.max_upload_mb:g} MB each.",
    key="doc_uploads",
)
st.caption(f"Allowed: {' '.join(ALLOWED_SUFFIXES)} \u00b7 at most {settings.max_upload_mb:g} MB per file")

if st.button("Ingest", type="primary", disabled=not uploads, key="doc_ingest"):
    saved: list[Path] = []
    with session.shows_errors("use that collection name"):
        check_collection_name(collection.strip())
        for up in uploads or []:
            try:
                saved.append(save_upload(settings, collection.strip(), up.name, up.getvalue()))
            except JambaStackError as exc:
                st.error(f"Could not add {up.name}: {exc}", icon="\u274c")
    if saved:
        bar = st.progress(0.0, text=f"Ingesting {len(saved)} file(s)...")

        def on_progress(done: int, total: int, message: str) -> None:
            bar.progress(min(done / total, 1.0), text=message)

        with session.shows_errors("ingest the files"):
            reports = ingest_files(
                settings, collection.strip(), saved, session.embedder(settings), on_progress=on_progress
            )
            bar.progress(1.0, text="Done")
            outcomes = upload_outcomes(saved, reports)
            for skipped in (o for o in outcomes if not o.ingested):
                st.warning(f"Skipped {skipped.name}: {skipped.reason}. It was not kept.")
            ingested = [o for o in outcomes if o.ingested]
            added = sum(r.chunks_added for r in reports)
            total = reports[-1].chunks_total if reports else 0
            if ingested:
                st.success(
                    f"Ingested {len(ingested)} of {len(outcomes)} file(s) into {collection.strip()!r}: "
                    f"{added} chunks added, {total} in the collection."
                )
            else:
                st.error(
                    f"Nothing was ingested into {collection.strip()!r}: no uploaded file had text to read "
                    "(see above). Upload files with text.",
                    icon="\u274c",
                )
            with session.shows_errors("list the collections"):
                collections = list_collections(settings)

# ---- collections and sources -----------------------------------------------------------------------
st.subheader("Collections")
if not collections:
    st.info("No collections yet: add files above.")
for info in collections:
    with st.expander(
        f"{info.name} \u00b7 {info.chunks} chunks \u00b7 {len(info.sources)} files", expanded=True
    ):
        strays = stray_uploads(settings, info)
        if strays:
            st.warning(
                f"{len(strays)} uploaded file(s) in this collection's folder are not in the collection "
                f"(never ingested): {', '.join(p.name for p in strays)}."
            )
            if st.button("Delete files not in the collection", key=f"doc_strays_{info.name}"):
                for stray in strays:
                    delete_stray_upload(settings, info.name, stray.name)
                st.session_state["doc_flash"] = f"Deleted {len(strays)} file(s) not in {info.name!r}."
                st.rerun()
        if not info.sources:
            st.caption("No files recorded for this collection in this data dir.")
            continue
        st.dataframe(
            [{"file": s.file_name, "chunks": s.chunks, "path": s.source} for s in info.sources],
            hide_index=True,
        )
        labels = {s.source: f"{s.file_name} ({s.chunks} chunks)" for s in info.sources}
        chosen = st.selectbox(
            "Source", list(labels), format_func=labels.__getitem__, key=f"doc_src_{info.name}"
        )
        if st.button("Delete source", key=f"doc_del_{info.name}"):
            with session.shows_errors(f"delete {Path(chosen).name}"):
                n = delete_source(settings, info.name, chosen)
                # Shown after the rerun, which lists the collection without the file.
                st.session_state["doc_flash"] = (
                    f"Deleted {Path(chosen).name}: {n} chunks removed from {info.name!r}."
                )
                st.rerun()
