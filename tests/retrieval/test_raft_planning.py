"""RAFT document sets on the SQuAD sample (real questions with gold answers, a real hybrid
retriever): P is realised within sampling error, no distractor is the oracle or holds the answer,
hard negatives come from the retriever. No teacher is needed to plan rows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from jamba_stack.retrieval.raft.corpus import (
    build_corpus,
    choose_documents,
    hard_candidates,
    read_questions_file,
)
from jamba_stack.retrieval.raft.quotes import contains_answer, normalize_ws

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad_small" / "squad_small.jsonl"


@pytest.fixture(scope="module")
def squad(tmp_path_factory: pytest.TempPathFactory, embedder):  # noqa: ANN001, ANN201
    if not SQUAD.is_file():
        pytest.skip(f"SQuAD sample not found at {SQUAD} (shared/ sits beside the repo in CI)")
    recs = [json.loads(line) for line in SQUAD.read_text().splitlines()]
    root = tmp_path_factory.mktemp("squad")
    contexts: dict[str, str] = {}
    qs = []
    for r in recs:
        pid = f"p{list(contexts.values()).index(r['context'])}" if r["context"] in contexts.values() else None
        if pid is None:
            pid = f"p{len(contexts)}"
            contexts[pid] = r["context"]
        if r["answers"]:
            qs.append({"question": r["question"], "answer": r["answers"][0]["text"], "doc_id": pid})
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in contexts.items())
    )
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    chunks, retriever = build_corpus(
        root / "corpus.jsonl", data_dir=tmp_path_factory.mktemp("squaddata"), embedder=embedder
    )
    return root, chunks, retriever


def test_p_realised_and_distractors_are_clean(squad) -> None:  # noqa: ANN001
    root, chunks, retriever = squad
    qas, unmatched = read_questions_file(root / "questions.jsonl", chunks)
    assert unmatched == 0 and len(qas) >= 250
    by_id = {c.id: c for c in chunks}
    hard = hard_candidates(retriever, [q.question for q in qas], 21)
    p, k = 0.8, 4
    kinds: dict[str, int] = {}
    present = 0
    for qa, h in zip(qas, hard, strict=True):
        oracle = by_id[qa.chunk_id]
        assert contains_answer(oracle.text, qa.answer) or qa.answer.lower() in oracle.text.lower()
        ds = choose_documents(
            qa, oracle, h, chunks, by_id, distractors=k, p=p, hard_ratio=0.5, not_same_source=False,
            rng=random.Random(f"7/{qa.qid}"),
        )  # fmt: skip
        present += ds.oracle_present
        assert len(ds.documents) == k + 1
        for d, kind in zip(ds.documents, ds.kinds, strict=True):
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "oracle":
                assert d.id == qa.chunk_id and ds.documents.index(d) == ds.oracle_index
            else:
                assert d.id != qa.chunk_id and normalize_ws(d.text) != normalize_ws(oracle.text)
                assert not contains_answer(d.text, qa.answer)
        if ds.oracle_present:
            assert [x.id for x in ds.documents].count(qa.chunk_id) == 1
        else:
            assert ds.oracle_index is None and qa.chunk_id not in [x.id for x in ds.documents]
    n = len(qas)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(present / n - p) < 4 * sigma, (present / n, p, sigma)
    assert kinds["hard"] > 0.8 * kinds["random"]  # hard negatives really come from the retriever
    # the hard ones are retrieved for the question: they rank in the question's top list
    first = hard[0]
    assert first and qas[0].chunk_id in first[:21]


def test_same_seed_same_set_and_not_same_source(squad) -> None:  # noqa: ANN001
    root, chunks, retriever = squad
    qas, _ = read_questions_file(root / "questions.jsonl", chunks)
    by_id = {c.id: c for c in chunks}
    qa = qas[0]
    h = hard_candidates(retriever, [qa.question], 21)[0]
    kw = dict(distractors=4, p=0.8, hard_ratio=0.5, not_same_source=True)
    a = choose_documents(qa, by_id[qa.chunk_id], h, chunks, by_id, rng=random.Random("s"), **kw)
    b = choose_documents(qa, by_id[qa.chunk_id], h, chunks, by_id, rng=random.Random("s"), **kw)
    assert [d.id for d in a.documents] == [d.id for d in b.documents] and a.kinds == b.kinds
    doc = by_id[qa.chunk_id].doc_id
    assert len(a.documents) == 5 and sum(k == "oracle" for k in a.kinds) <= 1
    assert all(d.doc_id != doc for d, kind in zip(a.documents, a.kinds, strict=True) if kind != "oracle")
