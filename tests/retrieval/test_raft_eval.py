"""`raft eval` scoring on a hand-made set whose scores are known, and the command end to end on
the tiny model (its replies are gibberish: the test checks the report's shape and invariants)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jamba_stack.app.cli.raft import raft_app
from jamba_stack.retrieval.raft.errors import RaftDataError
from jamba_stack.retrieval.raft.evaluate import load_eval_rows, score
from jamba_stack.retrieval.raft.export import export_all
from jamba_stack.retrieval.raft.quotes import ABSTAIN_ANSWER

DOC_A = {"id": "a", "text": "Paris is the capital of France. It lies on the Seine.", "source": "a.md"}
DOC_B = {"id": "b", "text": "Berlin is the capital of Germany.", "source": "b.md"}


def _row(q: str, answer: str, oracle: bool) -> dict:
    docs = [DOC_B, DOC_A] if oracle else [DOC_B]
    return {
        "question": q,
        "answer": answer,
        "documents": docs,
        "oracle_present": oracle,
        "oracle_index": 1 if oracle else None,
    }


ROWS = [
    _row("Capital of France?", "Paris", True),
    _row("River of Paris?", "the Seine", True),
    _row("Capital of Germany?", "Berlin", True),
    _row("Capital of Spain?", "Madrid", False),
]
REPLIES = [
    # exact, verbatim quote -> EM 1, F1 1, cited ok
    "##Reason: ##begin_quote##Paris is the capital of France.##end_quote## <ANSWER>: Paris",
    # "Seine river" vs "the Seine": EM 0, F1 = 2*(1/2*1)/(1/2+1) = 2/3; quote with other spacing: ok
    "##Reason: ##begin_quote##It lies  on\nthe Seine.##end_quote## <ANSWER>: Seine river",
    # wrong answer, planted quote not in the documents -> EM 0, F1 0, citation fails
    "##Reason: ##begin_quote##Berlin is the capital of Spain.##end_quote## <ANSWER>: Rome",
    # no tag: scored on the whole text; abstains
    ABSTAIN_ANSWER,
]


def test_scores_known_set_exactly() -> None:
    s = score(ROWS, REPLIES)
    assert s["rows"] == 4 and s["scored"] == 4
    assert s["exact_match"] == pytest.approx(1 / 4)
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4, abs=1e-6)
    assert s["citation_precision"] == pytest.approx(2 / 3, abs=1e-6) and s["quoted"] == 3
    assert s["abstention_rate"] == pytest.approx(1 / 4)
    assert s["with_oracle"] == {
        "rows": 3,
        "exact_match": pytest.approx(1 / 3, abs=1e-6),
        "f1": pytest.approx(5 / 9, abs=1e-6),
    }
    assert s["without_oracle"] == {"rows": 1, "exact_match": 0.0, "f1": 0.0}
    # the gold reply for the no-oracle row, had the gold been to abstain
    s2 = score(
        [_row("Capital of Spain?", ABSTAIN_ANSWER, False)], [f"##Reason: none <ANSWER>: {ABSTAIN_ANSWER}"]
    )
    assert (
        s2["exact_match"] == 1.0
        and s2["without_oracle"]["exact_match"] == 1.0
        and s2["abstention_rate"] == 1.0
    )
    with pytest.raises(RaftDataError):
        score(ROWS, REPLIES[:2])


def test_eval_command_on_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [
        {**r, "id": f"r{i}", "cot_answer": REPLIES[i], "oracle_text": DOC_A["text"], "oracle_id": "a"}
        for i, r in enumerate(ROWS)
    ]
    export_all(tmp_path, rows, eval_fraction=0.5, seed=0, hf=False)
    assert len(load_eval_rows(tmp_path)) == 2
    res = CliRunner().invoke(
        raft_app,
        [
            "eval",
            "--data",
            str(tmp_path),
            "--model",
            str(tiny_model_dir),
            "--max-tokens",
            "8",
            "--json",
            "--data-dir",
            str(tmp_path / "d"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("exact_match", "f1", "citation_precision", "abstention_rate"):
        assert 0.0 <= out[key] <= 1.0
    assert out["rows"] == 2 and out["with_oracle"]["rows"] + out["without_oracle"]["rows"] == 2
    bad = CliRunner().invoke(
        raft_app, ["eval", "--data", str(tmp_path / "none"), "--json", "--data-dir", str(tmp_path / "d")]
    )
    assert bad.exit_code == 2 and "chat.jsonl" in bad.output
