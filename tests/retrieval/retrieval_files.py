"""Real files for the retrieval tests, made on the spot: a PDF (optionally encrypted) and a DOCX."""

from __future__ import annotations

from pathlib import Path

import pytest


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
