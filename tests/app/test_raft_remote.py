"""RAFT with the teacher behind `jamba-stack serve` (what the web app's RAFT builder uses under
`jamba-stack up`): the teacher's regex constraints reach the server as vLLM `structured_outputs`,
so the tiny model's answers are usable there as they are in-process, and both give the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jamba_stack.chat import chat_model
from jamba_stack.chat.remote import RemoteChatModel
from jamba_stack.retrieval.embeddings import make_embedder
from jamba_stack.retrieval.raft.corpus import build_corpus
from jamba_stack.retrieval.raft.generate import RaftConfig, generate
from jamba_stack.retrieval.raft.teacher import Teacher

CORPUS = {
    "animals.md": "# Cats\nCats sleep for most of the day. A cat can jump six times its length.\n\n"
    "# Dogs\nDogs descend from wolves. The dog was the first domesticated animal.\n",
    "earth.md": "# Rivers\nThe Nile is the longest river in Africa. Rivers carve valleys over time.\n\n"
    "# Mountains\nEverest is the highest mountain above sea level.\n",
}
CFG = dict(questions_per_chunk=1, distractors=1, p=0.5, max_tokens=40, question_max_tokens=48)


def test_a_teacher_behind_the_server_gives_the_rows_of_one_in_process(
    start_server: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in CORPUS.items():
        (docs / name).write_text(text)
    chunks, retriever = build_corpus(
        docs,
        data_dir=tmp_path / "data",
        embedder=make_embedder("minilm-fp32"),
        chunk_tokens=24,
        overlap_tokens=0,
    )
    server = start_server(tiny_model_dir, "--cache-memory-gb", "0.05", "--log-level", "warning")
    remote = RemoteChatModel(server.url, api_key=server.api_key, max_retries=0)
    try:
        got_remote, summary = generate(
            chunks, retriever, Teacher(remote, temperature=0.8), tmp_path / "r", RaftConfig(**CFG)
        )
    finally:
        remote.close()
    got_local, _ = generate(
        chunks,
        retriever,
        Teacher(chat_model(tiny_model_dir), temperature=0.8),
        tmp_path / "l",
        RaftConfig(**CFG),
    )
    assert got_remote, f"every row was dropped: {summary.dropped}"
    assert summary.grammar_constrained and summary.question_requests_failed == 0
    assert [(r["question"], r["cot_answer"]) for r in got_remote] == [
        (r["question"], r["cot_answer"]) for r in got_local
    ]
