"""RAFT builder: choose a corpus (an upload folder or a collection's files) and the options, generate
RAFT rows with a progress bar, preview them, and download the exports.

Generation runs in this script run through the same pipeline as `raft generate`
(`jamba_stack.retrieval.raft.pipeline.run_generation`, one resume fingerprint for both): the corpus
is ingested into its own collection, the session's model is the teacher, and the pipeline's
progress callback drives the bar.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import streamlit as st

from jamba_stack.app.settings import Settings
from jamba_stack.retrieval.loaders import SUPPORTED_SUFFIXES
from jamba_stack.retrieval.raft.teacher import Teacher
from jamba_stack.ui import session
from jamba_stack.ui.backend import list_raft_sets
from jamba_stack.ui.documents import list_collections
from jamba_stack.ui.errors import UIError

LAST_SET_KEY = "raft_last_set"
SKIP_DOWNLOADS = {"checkpoint.json", "questions.jsonl"}


def corpus_choices(s: Settings) -> dict[str, list[Path]]:
    """{label: files} for each upload folder with files the loaders read (the Documents page keeps
    no file it could not ingest), and each collection whose ingested files still exist
    (`list_collections` leaves RAFT's own collections out)."""
    out: dict[str, list[Path]] = {}
    if s.uploads_dir.is_dir():
        for folder in sorted(p for p in s.uploads_dir.iterdir() if p.is_dir()):
            files = sorted(
                f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES
            )
            if files:
                out[f"Uploaded files: {folder.name}"] = files
    for info in list_collections(s):
        files = [Path(src.source) for src in info.sources if Path(src.source).is_file()]
        if files:
            out[f"Collection: {info.name}"] = files
    return out


def corpus_folder(s: Settings, label: str, files: list[Path]) -> Path:
    """One folder holding the corpus: an upload folder itself, or a copy of a collection's files
    (its sources can lie anywhere; `build_corpus` reads one file or folder)."""
    parents = {f.parent for f in files}
    if len(parents) == 1 and all(f.parent.parent == s.uploads_dir for f in files):
        return parents.pop()
    folder = s.data_dir / "raft" / "corpora" / re.sub(r"[^A-Za-z0-9._-]+", "_", label)
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, folder / f.name)
    return folder


def check_set_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise UIError(f"set name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def run_generation(s: Settings, docs: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Generate the set into `out` with the session's model as teacher, as `raft generate` does.
    Returns the summary report. Raises `RaftError` (bad options, before any work), `UIError`,
    what ingest and the model raise."""
    from jamba_stack.retrieval.raft.generate import RaftConfig
    from jamba_stack.retrieval.raft.pipeline import CorpusSpec
    from jamba_stack.retrieval.raft.pipeline import run_generation as run

    cfg = RaftConfig(
        questions_per_chunk=opts["questions_per_chunk"], distractors=opts["distractors"], p=opts["p"],
        seed=opts["seed"], max_tokens=opts["max_tokens"], question_max_tokens=opts["max_tokens"],
        max_chunks=opts["max_chunks"] or None, checkpoint_every=4,
    )  # fmt: skip
    corpus = CorpusSpec(docs, embedder=s.embedder, chunk_tokens=opts["chunk_tokens"] or None)
    bar = st.progress(0.0, text="Ingesting the corpus...")

    def on_progress(phase: str, done: int, total: int) -> None:
        share = done / max(total, 1)
        if phase == "ingest":
            bar.progress(
                0.1 * share, text="Ingesting the corpus..." if share < 1 else "Asking the teacher..."
            )
        elif phase == "questions":
            bar.progress(0.1 + 0.3 * share, text=f"Questions: {done}/{total} chunks")
        else:
            bar.progress(0.4 + 0.6 * share, text=f"Rows: {done}/{total}")

    teacher = Teacher(session.chat_model(s), grammar=True)
    try:
        summary, report = run(
            corpus, out, teacher, cfg, data_dir=s.data_dir, chroma_url=s.chroma_url, overwrite=True,
            eval_fraction=opts["eval_fraction"], on_progress=on_progress,
        )  # fmt: skip
    except ValueError as exc:  # the chunker's check of chunk_tokens
        raise UIError(f"{exc}: change the chunk tokens") from None
    bar.progress(1.0, text=f"Done: {summary.rows} rows")
    return report


def export_files(out: Path) -> list[Path]:
    """The files a person downloads from a set: rows, summary and every export (no HF folder)."""
    files = [
        p for p in sorted(out.rglob("*")) if p.is_file() and "hf_dataset" not in p.relative_to(out).parts
    ]
    return [p for p in files if p.name not in SKIP_DOWNLOADS]


# ---- page -------------------------------------------------------------------------------------------
settings = session.settings()
st.title("RAFT builder")
st.caption(
    "Training rows for retrieval-augmented fine-tuning: each question is shown with its oracle chunk "
    "(with probability P) among distractor chunks, and answered with quotes by the teacher model."
)
session.random_model_notice(settings)

choices: dict[str, list[Path]] = {}
with session.shows_errors("list the documents"):
    choices = corpus_choices(settings)

st.subheader("Generate")
if not choices:
    st.error(
        "No documents to build from: upload files on the Documents page first (they land in the data "
        "dir's uploads folder).",
        icon="\u274c",
    )
else:
    label = st.selectbox("Corpus", list(choices), key="raft_corpus")
    st.caption(", ".join(f.name for f in choices[label]))
    c1, c2, c3, c4 = st.columns(4)
    qpc = c1.number_input("Questions per chunk", value=2, step=1, key="raft_qpc")
    distractors = c2.number_input("Distractors", value=3, step=1, key="raft_distractors")
    # No min/max on P: an out-of-range value gets the generator's own message, not a clamped widget.
    p = c3.number_input("P (oracle shown)", value=0.8, step=0.05, format="%.2f", key="raft_p")
    seed = c4.number_input("Seed", value=0, step=1, key="raft_seed")
    with st.expander("More options"):
        name = st.text_input("Set name", value="raft-set", key="raft_name")
        a1, a2, a3, a4 = st.columns(4)
        max_tokens = a1.number_input(
            "Teacher max tokens", value=384, min_value=8, step=16, key="raft_max_tokens"
        )
        max_chunks = a2.number_input(
            "Max chunks (0: all)", value=0, min_value=0, step=1, key="raft_max_chunks"
        )
        chunk_tokens = a3.number_input(
            "Chunk tokens (0: RAG default)", value=0, min_value=0, step=16, key="raft_chunk_tokens"
        )
        eval_fraction = a4.number_input("Eval fraction", value=0.2, step=0.05, format="%.2f", key="raft_eval")
    if st.button("Generate", type="primary", key="raft_generate"):
        with session.shows_errors("generate the RAFT set"):
            out = settings.raft_sets_dir / check_set_name(name.strip())
            opts = dict(
                questions_per_chunk=int(qpc), distractors=int(distractors), p=float(p), seed=int(seed),
                max_tokens=int(max_tokens), max_chunks=int(max_chunks), chunk_tokens=int(chunk_tokens),
                eval_fraction=float(eval_fraction),
            )  # fmt: skip
            docs = corpus_folder(settings, label, choices[label])
            report = run_generation(settings, docs, out, opts)
            st.session_state[LAST_SET_KEY] = out.name
            st.success(
                f"{report['rows']} rows ({report['oracle_rows']} with the oracle, P realised "
                f"{report['p_realised']:.2f}) in {out.name}: splits {report['splits']}."
            )

# ---- preview and downloads ---------------------------------------------------------------------------
st.subheader("Generated sets")
sets = list_raft_sets(settings)
if not sets:
    st.info("No generated sets yet.")
else:
    names = [p.name for p in sets]
    last = st.session_state.get(LAST_SET_KEY)
    chosen = st.selectbox("Set", names, index=names.index(last) if last in names else 0, key="raft_set")
    folder = settings.raft_sets_dir / chosen
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines() if line.strip()]
    if (folder / "summary.json").is_file():
        meta = json.loads((folder / "summary.json").read_text())
        st.caption(
            f"{meta.get('rows', len(rows))} rows \u00b7 splits {meta.get('splits')} \u00b7 teacher "
            f"{Path(str(meta.get('teacher', ''))).name} \u00b7 {meta.get('seconds', 0):.1f} s"
        )
    st.dataframe(
        [
            {"question": r["question"], "oracle_present": r["oracle_present"], "cot_answer": r["cot_answer"]}
            for r in rows
        ],
        hide_index=True,
    )
    st.markdown("**Downloads**")
    for i, f in enumerate(export_files(folder)):
        rel = str(f.relative_to(folder))
        st.download_button(rel, data=f.read_bytes(), file_name=rel.replace("/", "_"), key=f"raft_dl_{i}")
