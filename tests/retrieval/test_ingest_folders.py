"""Ingest over ordinary, messy folders (real files, real embedded Chroma): links to files in the
same folder, names that are not valid UTF-8, links that lead outside the folder, broken links,
loops, pipes and text the store cannot take. None of them may stop a batch: each is skipped,
counted and named, and what a walk no longer reaches is pruned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.ingest import IngestReport, ingest
from jamba_stack.retrieval.loaders import load_path
from jamba_stack.retrieval.search import open_retriever
from jamba_stack.retrieval.store import Store

BAD_NAME = os.fsdecode(b"caf\xe9 notes.txt")  # Latin-1 bytes: not valid UTF-8


def sources(data: Path, name: str) -> dict[str, int]:
    """source -> chunk count in Chroma."""
    out: dict[str, int] = {}
    for m in Store(data).open(name).chroma.get(include=["metadatas"])["metadatas"]:
        out[m["source"]] = out.get(m["source"], 0) + 1
    return out


def reasons(report: IngestReport) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in report.skipped}


def printable(report: IngestReport) -> None:
    """What the CLI prints must encode as UTF-8 (a bad name would crash the output otherwise)."""
    report.summary().encode("utf-8")
    json.dumps(report.to_json(), ensure_ascii=False).encode("utf-8")


def test_a_link_to_a_file_in_the_same_folder_is_ingested_once(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nHemoglobin carries oxygen in the blood.")
    (docs / "alias.md").symlink_to("guide.md")
    (docs / "sub").mkdir()
    (docs / "sub" / "again.md").symlink_to("../guide.md")
    r1 = ingest(docs, "links", data_dir=data, embedder=embedder)
    printable(r1)
    assert r1.files_new == 1 and r1.chunks_total == 1 and r1.chunks_added == 1
    assert sources(data, "links") == {str(docs / "guide.md"): 1}  # read through its own path
    why = reasons(r1)
    assert set(why) == {"alias.md", "again.md"}
    assert all("ingested once" in w and "guide.md" in w for w in why.values())
    r2 = ingest(docs, "links", data_dir=data, embedder=embedder)  # and every later run works too
    assert r2.files_unchanged == 1 and r2.chunks_added == 0 and r2.chunks_deleted == 0
    assert r2.chunks_total == 1 and len(r2.skipped) == 2
    # The file goes, its links break: its chunks are pruned, the broken links named.
    (docs / "guide.md").unlink()
    r3 = ingest(docs, "links", data_dir=data, embedder=embedder)
    assert r3.chunks_total == 0 and r3.files_removed == 1
    assert all("broken link" in w for w in reasons(r3).values())


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "good.txt").write_text("Mitochondria produce ATP for the cell.")
    (docs / BAD_NAME).write_text("Insulin lowers blood glucose.")
    (docs / "zz.txt").write_text("The thermostat keeps the room warm.")
    r = ingest(docs, "names", data_dir=data, embedder=embedder)
    printable(r)
    assert r.files_new == 2 and r.chunks_total == 2
    assert set(sources(data, "names")) == {str(docs / "good.txt"), str(docs / "zz.txt")}
    (bad,) = r.skipped
    assert (
        bad.path.endswith("caf\\xe9 notes.txt") and "not valid UTF-8" in bad.reason and "rename" in bad.reason
    )
    assert "caf\\xe9 notes.txt" in r.summary()
    # A link with a good name to the badly named file is skipped too, naming the target.
    (docs / "link.txt").symlink_to(BAD_NAME)
    r2 = ingest(docs, "names", data_dir=data, embedder=embedder)
    printable(r2)
    assert "caf\\xe9" in reasons(r2)["link.txt"] and r2.chunks_total == 2


def test_links_outside_the_folder_are_refused_by_default_and_pruned(
    tmp_path: Path, embedder: Embedder
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("The launch code is 0000 and lives outside the folder.")
    (docs / "public.txt").write_text("Public notes about enzymes.")
    (docs / "leak.txt").symlink_to(secret)
    r = ingest(docs, "outside", data_dir=data, embedder=embedder)  # no root: the folder is the root
    printable(r)
    assert set(sources(data, "outside")) == {str(docs / "public.txt")}
    assert "outside the allowed root" in reasons(r)["leak.txt"] and "--root" in reasons(r)["leak.txt"]
    assert all(
        "launch code" not in h.text
        for h in open_retriever("outside", data_dir=data, embedder=embedder).search("launch code", 5)
    )
    # A wider root allows the link; taking the link away prunes what it brought in.
    r = ingest(docs, "outside", data_dir=data, embedder=embedder, root=tmp_path)
    assert set(sources(data, "outside")) == {str(docs / "public.txt"), str(secret)} and r.files_new == 1
    (docs / "leak.txt").unlink()
    r = ingest(docs, "outside", data_dir=data, embedder=embedder, root=tmp_path)
    assert set(sources(data, "outside")) == {str(docs / "public.txt")} and r.files_removed == 1
    assert secret.exists()  # the file itself is untouched: only its chunks go
    # Back to the default root with the link in place: no longer reachable, so pruned again.
    (docs / "leak.txt").symlink_to(secret)
    ingest(docs, "outside", data_dir=data, embedder=embedder, root=tmp_path)
    assert str(secret) in sources(data, "outside")
    r = ingest(docs, "outside", data_dir=data, embedder=embedder)
    assert set(sources(data, "outside")) == {str(docs / "public.txt")} and r.files_removed == 1
    # load_path follows the same default.
    loaded, report = load_path(docs)
    assert [d.metadata["source"] for d in loaded] == [str(docs / "public.txt")]
    assert "outside the allowed root" in report.skipped[0].reason


def test_broken_links_loops_pipes_and_bad_text_never_stop_a_batch(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "ok.md").write_text("# Ok\n\nRibosomes build proteins.")
    (docs / "broken.txt").symlink_to("nowhere.txt")
    (docs / "loop1.txt").symlink_to("loop2.txt")
    (docs / "loop2.txt").symlink_to("loop1.txt")
    (docs / "dir-loop").mkdir()
    (docs / "dir-loop" / "up").symlink_to("..")
    os.mkfifo(docs / "pipe.txt")
    # A JSON escape can make a lone surrogate, which no store can hold.
    (docs / "records.jsonl").write_text(
        '{"_id": "a", "text": "bad \\ud800 text"}\n{"_id": "c", "text": "Good line."}\n'
    )
    (docs / "clean.jsonl").write_text('{"_id": "b", "text": "Chlorophyll absorbs light."}\n')
    r = ingest(docs, "messy", data_dir=data, embedder=embedder)
    printable(r)
    why = reasons(r)
    assert "broken link" in why["broken.txt"] and "nowhere.txt" in why["broken.txt"]
    assert "link loop" in why["loop1.txt"] and "link loop" in why["loop2.txt"]
    assert "not a regular file" in why["pipe.txt"]
    assert "not valid Unicode" in why["records.jsonl:1"]  # that line only; the file's other line is in
    assert set(sources(data, "messy")) == {
        str(docs / "ok.md"),
        str(docs / "records.jsonl"),
        str(docs / "clean.jsonl"),
    }
    assert r.chunks_total == 3 and len(r.skipped) == 5


@pytest.mark.parametrize("glob", [None, "**/*.md"])
def test_prune_keeps_files_of_another_glob(tmp_path: Path, embedder: Embedder, glob: str | None) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha.")
    (docs / "b.txt").write_text("Beta.")
    ingest(docs, "globs", data_dir=data, embedder=embedder)
    r = ingest(docs, "globs", data_dir=data, embedder=embedder, glob=glob)
    assert r.files_removed == 0 and len(sources(data, "globs")) == 2
