"""The `ingest` and `search` commands (`jamba_stack.app.cli.retrieval`, mounted at the top of `jamba-stack`)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from jamba_stack.app.cli import app

runner = CliRunner()
FP32 = ["--embedder", "minilm-fp32"]


def invoke(*args: str):  # noqa: ANN201 - click Result
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_ingest_search_and_batch(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    rows = [
        {"_id": "d1", "title": "Oxygen", "text": "Hemoglobin carries oxygen in red blood cells."},
        {"_id": "d2", "title": "Glucose", "text": "Insulin lowers blood glucose after meals."},
        {"_id": "d3", "title": "Energy", "text": "Mitochondria produce ATP for the cell."},
    ]
    (docs / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (docs / "junk.txt").write_bytes(b"\x00\x01\x02" * 100)
    r = invoke("ingest", str(docs), "--collection", "cli", "--data-dir", str(data), "--json", *FP32)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["chunks_total"] == 3 and report["skipped"][0]["path"].endswith("junk.txt")

    r = invoke(
        "search",
        "what carries oxygen",
        "--collection",
        "cli",
        "--k",
        "2",
        "--json",
        "--data-dir",
        str(data),
        *FP32,
    )
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["doc_id"] == "d1"
    assert {"rank", "chunk_id", "doc_id", "source", "score", "text"} <= set(hits[0])
    assert hits[0]["source"] == str((docs / "corpus.jsonl").resolve())

    r = invoke("search", "ATP", "-c", "cli", "--data-dir", str(data), "--mode", "bm25", *FP32)
    assert r.exit_code == 0 and "d3" in r.stdout

    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"_id": "q1", "text": "insulin"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "x" * 100_000})
        + "\n"
    )
    r = invoke(
        "search",
        "--collection",
        "cli",
        "--k",
        "10",
        "--json",
        "--queries",
        str(queries),
        "--data-dir",
        str(data),
        *FP32,
    )
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query_id"] for x in lines] == ["q1", "q2"]
    assert lines[0]["results"][0]["doc_id"] == "d2" and len(lines[0]["results"]) == 3
    assert lines[1]["results"] == [] and "100,000 characters" in lines[1]["error"]

    r = invoke(
        "search",
        "oxygen",
        "-c",
        "cli",
        "--data-dir",
        str(data),
        "--filter",
        '{"doc_id": "d3"}',
        "--json",
        *FP32,
    )
    assert [h["doc_id"] for h in json.loads(r.stdout)] == ["d3"]


def test_errors_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = invoke("search", "anything", "--collection", "missing", "--data-dir", str(data), *FP32)
    assert r.exit_code == 2 and "collection 'missing' does not exist" in r.stderr
    r = invoke(
        "ingest", str(tmp_path / "nothing-here"), "--collection", "cli", "--data-dir", str(data), *FP32
    )
    assert r.exit_code == 2 and "does not exist" in r.stderr
    (tmp_path / "out.txt").write_text("outside")
    (tmp_path / "root").mkdir()
    r = invoke(
        "ingest",
        str(tmp_path / "out.txt"),
        "-c",
        "cli",
        "--root",
        str(tmp_path / "root"),
        "--data-dir",
        str(data),
        *FP32,
    )
    assert r.exit_code == 2 and "outside the allowed root" in r.stderr
    r = invoke("search", "-c", "cli", "--data-dir", str(data), *FP32)
    assert r.exit_code == 2 and "--queries" in r.stderr
    r = invoke("search", "x", "-c", "cli", "--data-dir", str(data), "--filter", "{bad", *FP32)
    assert r.exit_code == 2 and "--filter is not valid JSON" in r.stderr
