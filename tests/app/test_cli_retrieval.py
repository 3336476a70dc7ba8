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


def test_an_ingest_of_nothing_usable_says_what_was_skipped_and_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("ingest", str(empty), "-c", "cli", "--data-dir", str(data), "-q", *FP32)
    assert r.exit_code == 2
    assert (
        f"nothing usable in {empty}: the folder is empty" in r.stderr and "no collection was made" in r.stderr
    )

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "empty.md").write_bytes(b"")
    (junk / "scan.pdf").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (junk / "data.xyz").write_text("a type ingest does not read")
    r = invoke("ingest", str(junk), "-c", "cli", "--data-dir", str(data), "-q", *FP32)
    assert r.exit_code == 2
    assert f"skipped {junk / 'empty.md'}: empty" in r.stderr  # each skipped file, with its reason
    assert f"skipped {junk / 'scan.pdf'}: unreadable PDF" in r.stderr
    assert (
        "2 file(s) skipped" in r.stderr and "1 file(s) of types ingest does not read (data.xyz)" in r.stderr
    )
    r = invoke("search", "anything", "-c", "cli", "--data-dir", str(data), *FP32)
    assert r.exit_code == 2 and "collection 'cli' does not exist" in r.stderr  # no empty collection left

    good = tmp_path / "good"
    good.mkdir()
    (good / "notes.md").write_text("# Keys\n\nRotate the API key every 90 days.\n")
    for _ in range(2):  # the second ingest changes nothing, and is still a success
        r = invoke("ingest", str(good), "-c", "cli", "--data-dir", str(data), "-q", *FP32)
        assert r.exit_code == 0, r.output
    assert "1 unchanged" in r.stdout and f"store: {data.resolve() / 'chroma'}" in r.stdout
    (good / "notes.md").unlink()  # a collection that exists keeps its chunks on a failed ingest
    r = invoke("ingest", str(good), "-c", "cli", "--data-dir", str(data), "-q", "--no-prune", *FP32)
    assert r.exit_code == 2 and "collection 'cli' is unchanged (1 chunks)" in r.stderr


def test_the_data_dir_is_absolute_announced_and_named_in_errors(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAMBA_STACK_DATA_DIR", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A read in a folder with no store: the error names the absolute data dir, and makes nothing.
    r = invoke("search", "q", "-c", "handbook", "--data-dir", "rel-data", *FP32)
    assert r.exit_code == 2
    assert f"the data dir {tmp_path / 'rel-data'} holds no collections" in r.stderr
    assert "JAMBA_STACK_DATA_DIR" in r.stderr and not (tmp_path / "rel-data").exists()
    # The default, ./data: an ingest says it is making a new data dir, and where
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Keys\n\nRotate the API key every 90 days.\n")
    r = invoke("ingest", str(docs), "-c", "handbook", "-q", *FP32)
    assert r.exit_code == 0, r.output
    assert f"note: making a new data dir {tmp_path / 'data'}" in r.stderr
    # ...and the same command from another folder is another store, which the error says
    monkeypatch.chdir(elsewhere)
    r = invoke("search", "key", "-c", "handbook", *FP32)
    assert r.exit_code == 2 and str(elsewhere / "data") in r.stderr
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "chroma").mkdir(exist_ok=True)
    r = invoke("search", "key", "-c", "other", *FP32)
    assert r.exit_code == 2 and f"looked in {tmp_path / 'data' / 'chroma'}" in r.stderr


def test_the_documented_format_filter_matches_markdown_chunks(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "notes.md").write_text("# Keys\n\nRotate the API key every 90 days.\n")
    (docs / "other.txt").write_text("Backups run nightly.")
    assert invoke("ingest", str(docs), "-c", "cli", "--data-dir", str(data), "-q", *FP32).exit_code == 0
    found = invoke(
        "search",
        "rotate",
        "-c",
        "cli",
        "--data-dir",
        str(data),
        "--json",
        "--filter",
        '{"format": "markdown"}',
        *FP32,
    )
    assert [Path(h["source"]).name for h in json.loads(found.stdout)] == [
        "notes.md"
    ]  # docs/retrieval.md's filter
    none = invoke(
        "search", "rotate", "-c", "cli", "--data-dir", str(data), "--filter", '{"format": "md"}', *FP32
    )
    assert none.exit_code == 0 and none.stdout == "" and "no hits" in none.stderr
