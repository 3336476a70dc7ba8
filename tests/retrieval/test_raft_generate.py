"""`raft generate` end to end on a small real corpus with the tiny model as teacher (random
weights; JSON mode and the quote grammar make its output usable): rows, exports and their formats,
resume, determinism, and the questions-file path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from jamba_stack.chat import chat_model
from jamba_stack.retrieval.raft.corpus import build_corpus
from jamba_stack.retrieval.raft.export import dataset_info, export_all
from jamba_stack.retrieval.raft.generate import RaftConfig, generate
from jamba_stack.retrieval.raft.prompts import ABSTAIN_REASON
from jamba_stack.retrieval.raft.quotes import normalize_ws, verify_answer
from jamba_stack.retrieval.raft.teacher import Teacher

CORPUS = {
    "animals.md": "# Cats\nCats sleep for most of the day. A cat can jump six times its length. Cats were "
    "domesticated in the Near East.\n\n# Dogs\nDogs descend from wolves. The dog was the first "
    "domesticated animal. Dogs smell far better than people.\n",
    "earth.md": "# Rivers\nThe Nile is the longest river in Africa. The Amazon carries the most water of any "
    "river. Rivers carve valleys over time.\n\n# Mountains\nEverest is the highest mountain above sea "
    "level. Mountains form where tectonic plates collide. Many mountains have glaciers.\n",
}
CFG = dict(
    questions_per_chunk=2, distractors=2, p=0.5, max_tokens=40, question_max_tokens=64, checkpoint_every=32
)

_MSG = {
    "type": "object",
    "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
    "required": ["role", "content"],
}
CHAT_SCHEMA = {
    "type": "object",
    "required": ["id", "question", "documents", "oracle_present", "oracle_index", "cot_answer", "messages"],
    "properties": {
        "question": {"type": "string", "minLength": 1},
        "documents": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "text", "source"],
                "properties": {k: {"type": "string"} for k in ("id", "text", "source")},
            },
        },
        "oracle_present": {"type": "boolean"},
        "oracle_index": {"type": ["integer", "null"]},
        "cot_answer": {"type": "string", "pattern": "<ANSWER>:"},
        "messages": {"type": "array", "minItems": 3, "maxItems": 3, "items": _MSG},
        "split": {"enum": ["train", "eval"]},
    },
}
PC_SCHEMA = {
    "type": "object",
    "required": ["prompt", "completion"],
    "additionalProperties": False,
    "properties": {
        "prompt": {"type": "array", "minItems": 2, "maxItems": 2, "items": _MSG},
        "completion": {"type": "array", "minItems": 1, "maxItems": 1, "items": _MSG},
    },
}
ALPACA_SCHEMA = {
    "type": "object",
    "required": ["instruction", "input", "output"],
    "properties": {k: {"type": "string"} for k in ("instruction", "input", "output", "system")},
}
SHAREGPT_SCHEMA = {
    "type": "object",
    "required": ["conversations"],
    "properties": {
        "conversations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["from", "value"],
                "properties": {"from": {"enum": ["human", "gpt"]}, "value": {"type": "string"}},
            },
        },
        "system": {"type": "string"},
    },
}
GORILLA_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "question", "context", "oracle_context", "cot_answer", "instruction"],
    "properties": {
        "context": {
            "type": "object",
            "required": ["title", "sentences"],
            "properties": {
                "title": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                "sentences": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            },
        },
        **{
            k: {"type": "string"}
            for k in ("id", "type", "question", "oracle_context", "cot_answer", "instruction")
        },
    },
}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("raftdocs")
    for name, text in CORPUS.items():
        (root / name).write_text(text)
    data = tmp_path_factory.mktemp("raftdata")
    chunks, retriever = build_corpus(
        root, data_dir=data, embedder=embedder, chunk_tokens=24, overlap_tokens=0
    )
    return root, chunks, retriever


@pytest.fixture(scope="module")
def teacher(tiny_model_dir: Path) -> Teacher:
    return Teacher(chat_model(tiny_model_dir), temperature=0.8, name="tiny")


@pytest.fixture(scope="module")
def run(corpus, teacher: Teacher, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    _, chunks, retriever = corpus
    out = tmp_path_factory.mktemp("raftout")
    rows, summary = generate(chunks, retriever, teacher, out, RaftConfig(**CFG))
    counts = export_all(out, rows, eval_fraction=0.25, seed=0)
    return out, rows, summary, counts


def test_rows_are_well_formed(run, corpus) -> None:  # noqa: ANN001
    out, rows, summary, _ = run
    _, chunks, _ = corpus
    assert len(chunks) >= 6 and summary.chunks == len(chunks)
    assert summary.rows == len(rows) >= 4 and summary.grammar_constrained
    assert summary.questions_generated > 0 and summary.question_requests_failed == 0
    assert (
        summary.rows + sum(summary.dropped.values())
        == summary.questions_generated - summary.duplicates_removed
    )
    assert summary.oracle_rows == sum(r["oracle_present"] for r in rows)
    assert summary.distractor_sources.get("hard", 0) > 0
    assert not summary.dropped  # the grammar (and its closing) makes every answer pass verification
    for r in rows:
        ids = [d["id"] for d in r["documents"]]
        assert len(ids) == CFG["distractors"] + 1 and len(set(ids)) == len(ids)
        # sources relative to the corpus folder: no path of the machine that built the set
        assert all(not d["source"].startswith("/") for d in r["documents"]), r["documents"]
        assert not r["oracle_source"].startswith("/")
        if r["oracle_present"]:
            assert ids[r["oracle_index"]] == r["oracle_id"]
            assert ids.count(r["oracle_id"]) == 1
            # quotes verbatim in the oracle, by construction of the grammar
            assert r["quotes"] and verify_answer(r["cot_answer"], [r["oracle_text"]]).ok
        else:
            assert r["oracle_index"] is None and r["oracle_id"] not in ids
            assert all(normalize_ws(d["text"]) != normalize_ws(r["oracle_text"]) for d in r["documents"])
            assert verify_answer(r["cot_answer"], [d["text"] for d in r["documents"]], min_quotes=0).ok
        # truncation-safe: the question comes before any document
        user = r["question"] and _user(r)
        assert user.index(r["question"]) < user.index("<DOCUMENT>")


def _user(r: dict[str, Any]) -> str:
    from jamba_stack.retrieval.raft.prompts import user_prompt

    return user_prompt(r["question"], r["documents"])


def test_exports_pass_their_schemas_and_load(run) -> None:  # noqa: ANN001
    out, rows, _, counts = run
    assert counts["train"] + counts["eval"] == len(rows) and counts["eval"] >= 1
    chat = _jsonl(out / "chat.jsonl")
    assert len(chat) == len(rows)
    for row in chat:
        jsonschema.validate(row, CHAT_SCHEMA)
        assert row["messages"][2]["content"] == row["cot_answer"]
        if row["oracle_present"]:
            assert row["documents"][row["oracle_index"]]["id"] in {r["oracle_id"] for r in rows}
    for split in ("train", "eval"):
        for obj in _jsonl(out / f"prompt_completion.{split}.jsonl"):
            jsonschema.validate(obj, PC_SCHEMA)
            assert [m["role"] for m in obj["prompt"]] == ["system", "user"]
            assert obj["completion"][0]["role"] == "assistant"
        for obj in json.loads((out / "llamafactory" / f"raft_alpaca.{split}.json").read_text()):
            jsonschema.validate(obj, ALPACA_SCHEMA)
        for obj in json.loads((out / "llamafactory" / f"raft_sharegpt.{split}.json").read_text()):
            jsonschema.validate(obj, SHAREGPT_SCHEMA)
        for obj in _jsonl(out / "gorilla" / f"raft.{split}.jsonl"):
            jsonschema.validate(obj, GORILLA_SCHEMA)
            assert len(obj["context"]["sentences"][0]) == CFG["distractors"] + 1
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert info == dataset_info()
    for name, spec in info.items():
        assert (out / "llamafactory" / spec["file_name"]).is_file(), name

    datasets = pytest.importorskip("datasets")
    dd = datasets.load_from_disk(str(out / "hf_dataset"))
    assert dd["train"].num_rows == counts["train"] and dd["eval"].num_rows == counts["eval"]
    assert dd["train"][0]["messages"][2]["role"] == "assistant"
    js = datasets.load_dataset("json", data_files=str(out / "chat.jsonl"), split="train")
    assert js.num_rows == len(rows) and set(CHAT_SCHEMA["required"]) <= set(js.column_names)
    pc = datasets.load_dataset("json", data_files=str(out / "prompt_completion.train.jsonl"), split="train")
    assert pc.num_rows == counts["train"]


def test_resume_and_determinism(run, corpus, teacher: Teacher, tmp_path: Path) -> None:  # noqa: ANN001
    import shutil

    from jamba_stack.retrieval.raft.errors import CheckpointMismatchError

    out, rows, _, _ = run
    _, chunks, retriever = corpus
    # a finished run resumes to the same rows without new work
    again, s2 = generate(chunks, retriever, teacher, out, RaftConfig(**CFG))
    assert again == rows and s2.rows == len(rows)
    # the same command in a fresh folder writes the same rows (same seeds, same batches)
    fresh, _ = generate(chunks, retriever, teacher, tmp_path / "fresh", RaftConfig(**CFG))
    assert fresh == rows
    # a run that lost its last row (killed before the checkpoint took it) redoes exactly that row
    # with the same question, documents and seeds; its text may differ in rare tokens, as it is now
    # decoded alone (a matmul's last bits depend on the batch's shape, and a near-tie in a sampled
    # token can flip), so only its form is checked
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    ckpt = json.loads((cut / "checkpoint.json").read_text())
    ckpt["finished"].remove(rows[-1]["id"])
    (cut / "checkpoint.json").write_text(json.dumps(ckpt))
    resumed, _ = generate(chunks, retriever, teacher, cut, RaftConfig(**CFG))
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in rows)
    assert {r["id"]: r["documents"] for r in resumed} == {r["id"]: r["documents"] for r in rows}
    assert {r["id"]: r["question"] for r in resumed} == {r["id"]: r["question"] for r in rows}
    kept = [r for r in resumed if r["id"] != rows[-1]["id"]]
    assert kept == [r for r in rows if r["id"] != rows[-1]["id"]], "rows on disk are kept as they were"
    redone = next(r for r in resumed if r["id"] == rows[-1]["id"])
    assert redone["cot_answer"].startswith("##Reason:") and "<ANSWER>:" in redone["cot_answer"]
    with pytest.raises(CheckpointMismatchError):  # other settings are refused, not mixed in
        generate(chunks, retriever, teacher, cut, RaftConfig(**{**CFG, "seed": 1}))


def test_questions_file_and_abstain(corpus, teacher: Teacher, tmp_path: Path) -> None:  # noqa: ANN001
    root, chunks, retriever = corpus
    qs = [
        {"question": "Where were cats domesticated?", "answer": "the Near East", "source": "animals.md"},
        {"question": "Which river is the longest in Africa?", "answer": "The Nile", "source": "earth.md"},
        {"question": "What is the highest mountain?", "answer": "Everest", "source": str(root / "earth.md")},
        {"question": "What do dogs descend from?", "answer": "wolves", "source": "animals.md"},
        {"question": "what do dogs descend from", "answer": "wolves", "source": "animals.md"},  # duplicate
        {"question": "Unknown file?", "answer": "x", "source": "missing.md"},
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    cfg = RaftConfig(**{**CFG, "p": 0.5, "no_oracle_answer": "abstain", "seed": 3})
    rows, summary = generate(chunks, retriever, teacher, tmp_path / "out", cfg, questions_file=qfile)
    assert summary.questions_from_file == 5 and summary.questions_unmatched == 1
    assert summary.duplicates_removed == 1 and summary.questions_generated == 0
    assert len(rows) + sum(summary.dropped.values()) == 4
    by_q = {r["question"]: r for r in rows}
    for q in qs[:4]:
        r = by_q.get(q["question"])
        if r is None:
            continue
        assert q["answer"].lower() in r["oracle_text"].lower()  # the oracle is the chunk with the answer
        for d, kind in zip(r["documents"], r["document_kinds"], strict=True):
            if kind != "oracle":
                assert q["answer"].lower() not in d["text"].lower()  # no distractor holds the answer
        if not r["oracle_present"]:
            assert r["cot_answer"] == ABSTAIN_REASON


def test_cli_generate_with_questions_file(corpus, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from jamba_stack.app.cli.raft import raft_app

    root, _, _ = corpus
    qfile = tmp_path / "q.jsonl"
    qs = [("Where were cats domesticated?", "the Near East"), ("What do dogs descend from?", "wolves")]
    qfile.write_text(
        "".join(json.dumps({"question": q, "answer": a, "source": "animals.md"}) + "\n" for q, a in qs)
    )
    out = tmp_path / "out"
    args = [
        "generate", "--docs", str(root), "--out", str(out), "--model", str(tiny_model_dir), "--questions",
        str(qfile), "--p", "0", "--no-oracle-answer", "abstain", "--distractors", "2", "--chunk-tokens", "24",
        "--overlap-tokens", "0", "--embedder", "minilm-fp32", "--data-dir", str(tmp_path / "d"), "--json", "-q",
    ]  # fmt: skip
    res = CliRunner().invoke(raft_app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 2 and summary["oracle_rows"] == 0 and summary["p_realised"] == 0.0
    assert summary["splits"] == {"train": 1, "eval": 1}
    for row in _jsonl(out / "chat.jsonl"):
        jsonschema.validate(row, CHAT_SCHEMA)
        assert row["cot_answer"] == ABSTAIN_REASON and row["oracle_index"] is None
        assert len(row["documents"]) == 3
    # eval with the stored documents, and with the retriever's top 1 and top 2 (RAG)
    ev = CliRunner().invoke(
        raft_app,
        [
            "eval",
            "--data",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--max-tokens",
            "8",
            "--rag-k",
            "1,2",
            "--json",
        ]
        + ["--data-dir", str(tmp_path / "d")],
    )
    assert ev.exit_code == 0, ev.output
    report = json.loads(ev.stdout.strip().splitlines()[-1])
    assert report["rows"] == 1 and set(report["rag"]) == {"top1", "top2"}
    assert 0.0 <= report["rag"]["top1"]["recall"] <= report["rag"]["top2"]["recall"] <= 1.0
    assert report["rag"]["top2"]["recall"] == 1.0  # an obvious question on a tiny corpus: the oracle is found
    bad = CliRunner().invoke(raft_app, [*args[:-2], "--p", "1.5", "--overwrite"])
    assert bad.exit_code == 2 and "p=1.5" in bad.output
