"""`run_generation` (the RAFT pipeline of `raft generate` and the web app) at its edges, on real
parts (the tiny model as teacher, real Chroma): empty splits export in every format, the Hugging
Face dataset included; a run where no row survives raises one clear error, exports nothing, is not
a finished set, and leaves no collection behind; RAFT's own collections are recognisable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jamba_stack.chat import chat_model
from jamba_stack.retrieval.raft.export import export_all
from jamba_stack.retrieval.raft.generate import RaftConfig
from jamba_stack.retrieval.raft.pipeline import (
    CorpusSpec,
    NoRowsError,
    is_finished_set,
    is_internal_collection,
    run_generation,
)
from jamba_stack.retrieval.raft.teacher import Teacher
from jamba_stack.retrieval.store import Store

NOTES = (
    "# Cats\n\nCats sleep for most of the day. A cat can jump six times its length.\n\n"
    "# Rivers\n\nThe Nile is the longest river in Africa. The Amazon carries the most water.\n"
)


def _row(i: int) -> dict:
    doc = {"id": f"c{i}", "text": "Cats sleep for most of the day.", "source": "a.md"}
    return {
        "id": f"r{i}",
        "question": f"How long do cats sleep ({i})?",
        "answer": "most of the day",
        "documents": [doc],
        "oracle_present": True,
        "oracle_index": 0,
        "oracle_id": doc["id"],
        "oracle_text": doc["text"],
        "cot_answer": "##begin_quote##Cats sleep for most of the day.##end_quote## <ANSWER>: most of the day",
    }


@pytest.mark.parametrize(
    ("n_rows", "eval_fraction", "splits"),
    [(3, 0.0, {"train": 3, "eval": 0}), (1, 0.5, {"train": 1, "eval": 0}), (0, 0.2, {"train": 0, "eval": 0})],
)
def test_empty_splits_export_in_every_format(
    tmp_path: Path, n_rows: int, eval_fraction: float, splits: dict[str, int]
) -> None:
    datasets = pytest.importorskip("datasets")
    counts = export_all(tmp_path, [_row(i) for i in range(n_rows)], eval_fraction=eval_fraction, hf=True)
    assert counts == splits
    dd = datasets.load_from_disk(str(tmp_path / "hf_dataset"))
    assert {s: dd[s].num_rows for s in ("train", "eval")} == splits
    # an empty split keeps its columns and types, so it concatenates with a full one
    assert dd["eval"].features == dd["train"].features
    assert "messages" in dd["eval"].column_names
    for split, n in splits.items():
        lines = (tmp_path / f"chat.{split}.jsonl").read_text().splitlines()
        assert len(lines) == n
        assert len(json.loads((tmp_path / "llamafactory" / f"raft_alpaca.{split}.json").read_text())) == n


def test_no_surviving_row_is_one_error_and_leaves_nothing_behind(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text(NOTES)
    data, out = tmp_path / "data", tmp_path / "sets" / "s1"
    # 6 tokens cannot hold a quote and an <ANSWER>: every answer fails verification
    cfg = RaftConfig(questions_per_chunk=1, max_tokens=6, question_max_tokens=48, retries=0, max_chunks=1)
    teacher = Teacher(chat_model(tiny_model_dir), grammar=True, name="tiny")
    before = Store(data).list_collections()
    with pytest.raises(NoRowsError) as err:
        run_generation(
            CorpusSpec(docs, embedder="minilm-fp32", chunk_tokens=24), out, teacher, cfg, data_dir=data
        )
    message = str(err.value)
    assert "no row passed verification" in message and "max tokens" in message, message
    assert "Keys mismatch" not in message
    assert not is_finished_set(out)
    assert not (out / "chat.jsonl").exists() and not (out / "summary.json").exists()
    assert Store(data).list_collections() == before  # the corpus collection made for the run is gone


def test_a_failed_rerun_unlists_the_set_it_overwrites(tmp_path: Path, tiny_model_dir: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text(NOTES)
    data, out = tmp_path / "data", tmp_path / "s1"
    out.mkdir()
    export_all(out, [_row(0), _row(1)], eval_fraction=0.5, hf=False)  # an earlier, finished set
    (out / "summary.json").write_text("{}")
    assert is_finished_set(out)
    cfg = RaftConfig(questions_per_chunk=1, max_tokens=6, question_max_tokens=48, retries=0, max_chunks=1)
    teacher = Teacher(chat_model(tiny_model_dir), grammar=True, name="tiny")
    spec = CorpusSpec(docs, embedder="minilm-fp32", chunk_tokens=24)
    with pytest.raises(NoRowsError):
        run_generation(spec, out, teacher, cfg, data_dir=data, overwrite=True)
    assert not is_finished_set(out)  # the old exports no longer pass for this run's result


def test_internal_collection_names() -> None:
    assert is_internal_collection("raft-0123456789abcdef")
    assert not is_internal_collection("raft-notes")  # a person's name for a collection
    assert not is_internal_collection("docs")
