"""Loaders on real files of every supported kind, and the bad inputs a user will feed them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from retrieval_files import write_docx, write_pdf

from jamba_stack.retrieval.errors import PathNotAllowedError, SourceNotFoundError
from jamba_stack.retrieval.loaders import SkipFile, load_file, load_path


def test_text_markdown_html(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Plain notes about Mamba layers.\n")
    (tmp_path / "b.md").write_text("# Guide\n\nIntro.\n\n## Install\n\nRun pip.\n")
    (tmp_path / "c.html").write_text(
        "<html><head><title>Page T</title><script>var x=1;</script></head>"
        "<body><nav>menu</nav><h1>Top</h1><p>First <b>para</b>.</p><h2>Sub</h2><ul><li>item one</li></ul></body></html>"
    )
    docs, report = load_path(tmp_path)
    assert report.files == 3 and not report.skipped
    by = {Path(str(d.metadata["source"])).name: d for d in docs}
    assert by["a.txt"].text.startswith("Plain notes") and by["a.txt"].markup == "plain"
    assert by["b.md"].markup == "markdown" and by["b.md"].metadata["title"] == "Guide"
    html = by["c.html"]
    assert html.metadata["title"] == "Page T"
    assert "# Top" in html.text and "## Sub" in html.text and "- item one" in html.text
    assert "var x" not in html.text and "menu" not in html.text
    for d in docs:
        m = d.metadata
        assert Path(str(m["source"])).is_absolute() and m["doc_id"] == m["source"]
        assert m["modified"].endswith("+00:00") and isinstance(m["mtime"], float)


def test_pdf_pages_and_docx(tmp_path: Path) -> None:
    pdf = write_pdf(
        tmp_path / "r.pdf", ["Page one talks about attention.", "", "Page three talks about Mamba."]
    )
    docs, _ = load_file(pdf.resolve())
    assert [d.metadata["page"] for d in docs] == [1, 3]  # the blank page is left out
    assert "Mamba" in docs[1].text and docs[0].metadata["format"] == "pdf"

    dx = write_docx(tmp_path / "w.docx", "Report", [("Results", "It works."), ("Limits", "Some.")])
    docs, _ = load_file(dx.resolve())
    assert docs[0].metadata["title"] == "Report" and docs[0].markup == "markdown"
    assert "## Results" in docs[0].text and "It works." in docs[0].text


def test_json_and_beir_jsonl_keep_ids(tmp_path: Path) -> None:
    rows = [
        {"_id": "d1", "title": "T1", "text": "alpha", "metadata": {"year": 2020}},
        {"_id": "d2", "title": "T2", "text": "beta"},
    ]
    jl = tmp_path / "corpus.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n" + json.dumps({"_id": "d3"}) + "\n")
    docs, skipped = load_file(jl)
    assert [d.metadata["doc_id"] for d in docs] == ["d1", "d2"]
    assert docs[0].metadata["year"] == 2020 and docs[0].context == "T1"
    assert {s.path.rsplit(":", 1)[1] for s in skipped} == {"3", "4"}
    assert "invalid JSON" in skipped[0].reason and "no text" in skipped[1].reason

    js = tmp_path / "list.json"
    js.write_text(json.dumps([{"id": 7, "content": "seven"}, "bare string"]))
    docs, _ = load_file(js)
    assert [d.metadata["doc_id"] for d in docs] == ["7", "item 1"]


def test_glob_hidden_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.md").write_text("# X\n\nx")
    (tmp_path / "y.txt").write_text("y")
    (tmp_path / ".hidden.md").write_text("secret")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n")
    docs, report = load_path(tmp_path)
    assert sorted(Path(str(d.metadata["source"])).name for d in docs) == ["x.md", "y.txt"]
    docs, report = load_path(tmp_path, glob="**/*.md")
    assert [Path(str(d.metadata["source"])).name for d in docs] == ["x.md"]
    docs, report = load_path(tmp_path, glob="*.png")
    assert not docs and "unsupported file type .png" in report.skipped[0].reason


def test_bad_inputs_are_skipped_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.md").write_text("  \n\n ")
    (tmp_path / "garbage.txt").write_bytes(os.urandom(4096))
    (tmp_path / "zero.pdf").write_bytes(b"")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf")
    write_pdf(tmp_path / "locked.pdf", ["secret text"], password="hunter2")
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "notzip.docx").write_bytes(b"PK not really")
    (tmp_path / "ok.txt").write_text("fine")
    docs, report = load_path(tmp_path, max_bytes=4096)
    assert [Path(str(d.metadata["source"])).name for d in docs] == ["ok.txt"]
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {
        "empty.txt",
        "blank.md",
        "garbage.txt",
        "zero.pdf",
        "broken.pdf",
        "locked.pdf",
        "big.txt",
        "bad.json",
        "notzip.docx",
    }
    assert reasons["empty.txt"].startswith("empty") and reasons["blank.md"].startswith("empty")
    assert "binary" in reasons["garbage.txt"] or "not UTF-8" in reasons["garbage.txt"]
    assert "0-byte PDF" in reasons["zero.pdf"]
    assert "unreadable PDF" in reasons["broken.pdf"]
    assert "encrypted" in reasons["locked.pdf"] and "decrypt" in reasons["locked.pdf"]
    assert "oversized" in reasons["big.txt"] and "--max-file-mb" in reasons["big.txt"]
    assert "invalid JSON" in reasons["bad.json"] and "docx" in reasons["notzip.docx"]


def test_pdf_with_empty_user_password_opens(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "owner-only.pdf", ["readable text"], password="")
    docs, _ = load_file(pdf)
    assert "readable text" in docs[0].text


def test_paths_outside_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    (root / "in.txt").write_text("public")
    (root / "link.txt").symlink_to(outside)
    with pytest.raises(PathNotAllowedError, match="outside the allowed root"):
        load_path(outside, root=root)
    with pytest.raises(PathNotAllowedError):
        load_path(root / ".." / "outside.txt", root=root)
    with pytest.raises(SourceNotFoundError):
        load_path(root / "missing.txt", root=root)
    docs, report = load_path(root, root=root)
    assert [d.text for d in docs] == ["public"]
    assert "outside the allowed root" in report.skipped[0].reason
    with pytest.raises(SkipFile):
        load_file(root / "in.txt", max_bytes=1)
