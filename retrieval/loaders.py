"""Files -> `Document`s: txt, md, html, pdf (pypdf), docx (python-docx), json/jsonl (BEIR's
`corpus.jsonl` included), and folders walked with a glob.

A file that cannot be used (empty, binary, oversized, encrypted, malformed) raises `SkipFile` with
the reason; `load_path` turns those into `Skipped` rows of its report, so one bad file never stops
a batch. Paths outside the allowed root raise `PathNotAllowedError`. A folder is walked by `walk`:
links that lead outside the root (by default the folder itself), second paths to a file already
found, names that are not valid UTF-8, broken links and link loops come back as `Skipped`, named.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jamba_stack.retrieval.errors import PathNotAllowedError, SourceNotFoundError

Markup = Literal["plain", "markdown"]
MetaValue = str | int | float | bool

TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
JSON_SUFFIXES = {".json"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
SUPPORTED_SUFFIXES = (
    TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | JSON_SUFFIXES | JSONL_SUFFIXES | {".pdf", ".docx"}
)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Field names other tools use for a record's text and id (BEIR, LangChain, LlamaIndex dumps).
TEXT_KEYS = ("text", "content", "body", "page_content", "abstract")
ID_KEYS = ("_id", "id", "doc_id")


class SkipFile(Exception):
    """A file (or record) that cannot be ingested; `str(e)` is the reason shown in the report."""


@dataclass(frozen=True)
class Document:
    """One loaded unit: a whole file, a PDF page, or one JSON record.

    `metadata` always has `source` (resolved path), `doc_id`, `format`, `modified` (ISO-8601, UTC)
    and `mtime` (epoch seconds); `title` and `page` (1-based) when known. `markup="markdown"` means
    `#` heading lines structure the text (the chunker splits on them). `context` is a short header
    (a record's title) that every chunk of this document starts with.
    """

    text: str
    metadata: dict[str, MetaValue]
    markup: Markup = "plain"
    context: str = ""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class LoadReport:
    files: int = 0
    documents: int = 0
    skipped: list[Skipped] = field(default_factory=list)


def display_path(path: str | Path) -> str:
    """`path` as printable text: bytes of a name that is not valid UTF-8 shown as `\\xff`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8_name(path: Path) -> bool:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def resolve_within(path: str | Path, root: str | Path | None) -> Path:
    """`path` resolved (symlinks and `..` followed); raises `PathNotAllowedError` if it is not inside
    `root` and `SourceNotFoundError` if it does not exist. `root=None` allows any path."""
    p = Path(path).expanduser()
    resolved = p.resolve()
    if root is not None:
        root_r = Path(root).expanduser().resolve()
        if not resolved.is_relative_to(root_r):
            raise PathNotAllowedError(
                f"{display_path(path)!r} resolves to {display_path(resolved)}, outside the allowed root "
                f"{display_path(root_r)}: move the files under the root or pass a wider --root"
            )
    if not resolved.exists():
        raise SourceNotFoundError(f"{display_path(path)!r} does not exist: check the path")
    return resolved


@dataclass(frozen=True)
class Found:
    """A file `walk` yields: `path` as reached under the walked folder (through links, if any)
    and `file`, the resolved path it is read from (the document's `source`)."""

    path: Path
    file: Path


def walk(path: Path, glob: str | None = None, root: Path | None = None) -> Iterator[Found | Skipped]:
    """The files under `path` (itself if a file) matching `glob` (default: every supported type,
    recursively), sorted, each file once; hidden files and folders are left out, and folders
    reached through links are not entered.

    `root` (default: `path` when it is a folder) bounds where links may lead. Come back as
    `Skipped`, named: a link leading outside `root`, a second path to a file already found (a
    link to it: the file is read once, through its own path where it has one), a name that is not
    valid UTF-8, a broken link or link loop, and anything that is not a regular file."""
    if path.is_file():
        yield Found(path, path.resolve())
        return
    root_r = (root if root is not None else path).resolve()
    by_file: dict[Path, list[Path]] = {}
    for p in sorted(path.glob(glob or "**/*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or p.is_dir():
            continue
        if glob is None and p.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        name = display_path(p)
        if not _utf8_name(p):
            yield Skipped(name, "the file name is not valid UTF-8: rename the file (e.g. convmv -t utf-8)")
            continue
        try:
            r = p.resolve(strict=True)
        except (OSError, RuntimeError) as e:  # RuntimeError: a link loop (Python < 3.13)
            loop = isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP
            what = "a link loop" if loop else "a broken link"
            target = os.readlink(p) if p.is_symlink() else "?"
            yield Skipped(name, f"{what} (points to {display_path(target)}): fix or remove the link")
            continue
        if not r.is_file():
            yield Skipped(name, "not a regular file (a pipe, socket or device): nothing to read")
            continue
        if not r.is_relative_to(root_r):
            yield Skipped(
                name,
                f"a link to {display_path(r)}, outside the allowed root {display_path(root_r)}: "
                "pass --root with a folder that holds both to ingest it",
            )
            continue
        if not _utf8_name(r):
            yield Skipped(
                name, f"links to {display_path(r)}, whose name is not valid UTF-8: rename that file"
            )
            continue
        by_file.setdefault(r, []).append(p)
    for r, paths in sorted(by_file.items(), key=lambda kv: kv[1][0]):
        # The file's own path where the walk reached it, else the first link to it.
        own = next((p for p in paths if not p.is_symlink()), paths[0])
        yield Found(own, r)
        for p in paths:
            if p != own:
                yield Skipped(
                    display_path(p), f"a link to {display_path(own)}, which is ingested once, as itself"
                )


def iter_files(path: Path, glob: str | None = None, root: Path | None = None) -> Iterator[Path | Skipped]:
    """`walk`'s files as their resolved paths, and what it skipped."""
    for f in walk(path, glob, root):
        yield f.file if isinstance(f, Found) else f


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _base_meta(path: Path, fmt: str) -> dict[str, MetaValue]:
    mtime = path.stat().st_mtime
    return {
        "source": str(path),
        "doc_id": str(path),
        "format": fmt,
        "modified": dt.datetime.fromtimestamp(mtime, dt.UTC).isoformat(timespec="seconds"),
        "mtime": mtime,
    }


def _decode_text(data: bytes, path: Path) -> str:
    """UTF-8 (BOM allowed), else cp1252 for old Windows text; NUL bytes or too many control
    characters mean binary content, which is refused."""
    if b"\x00" in data[:65536]:
        raise SkipFile(f"binary content (NUL bytes), not {path.suffix or 'text'}: is the file misnamed?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as e:
            raise SkipFile(f"not UTF-8 or cp1252 text ({e.reason} at byte {e.start}): binary file?") from e
    sample = text[:65536]
    bad = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f") + sample.count("\ufffd")
    if sample and bad / len(sample) > 0.02:
        raise SkipFile(f"binary content ({bad} control characters in the first {len(sample)}): not text")
    return text


def _require_text(text: str) -> str:
    if not text.strip():
        raise SkipFile("empty: no text")
    return text


def _load_text(path: Path, data: bytes) -> list[Document]:
    text = _require_text(_decode_text(data, path))
    return [Document(text, _base_meta(path, "text") | {"title": path.stem})]


def _load_markdown(path: Path, data: bytes) -> list[Document]:
    text = _require_text(_decode_text(data, path))
    title = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), path.stem)
    return [Document(text, _base_meta(path, "markdown") | {"title": title}, markup="markdown")]


def html_to_markdown(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page: headings become `#` lines, scripts/styles/navigation dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template", "svg"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    blocks: list[str] = []
    body = soup.body or soup
    for el in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "td", "th", "dt", "dd"]):
        if el.find_parent(["p", "li", "pre", "td", "th", "dd"]) is not None:
            continue  # its text is part of the enclosing block
        text = el.get_text(" ", strip=True) if el.name != "pre" else el.get_text()
        if not text.strip():
            continue
        if el.name[0] == "h" and el.name[1:].isdigit():
            blocks.append("#" * int(el.name[1]) + " " + text)
        elif el.name == "li":
            blocks.append("- " + text)
        else:
            blocks.append(text)
    if not blocks:  # no block tags: plain text inside <body>
        blocks = [body.get_text("\n", strip=True)]
    if not title:
        h1 = body.find("h1")
        title = h1.get_text(" ", strip=True) if h1 else ""
    return title, "\n\n".join(blocks)


def _load_html(path: Path, data: bytes) -> list[Document]:
    title, text = html_to_markdown(_decode_text(data, path))
    _require_text(text)
    return [Document(text, _base_meta(path, "html") | {"title": title or path.stem}, markup="markdown")]


def _load_pdf(path: Path, data: bytes) -> list[Document]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data:
        raise SkipFile("empty: 0-byte PDF")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("encrypted PDF with a password: decrypt it first (e.g. qpdf --decrypt)")
        pages = list(reader.pages)
        meta_title = (reader.metadata.title if reader.metadata else None) or path.stem
    except SkipFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise SkipFile(f"unreadable PDF ({type(e).__name__}: {e})") from e
    except Exception as e:  # pypdf raises assorted errors on broken files; one file must not stop a batch
        if "crypt" in str(e).lower():
            raise SkipFile(f"encrypted PDF we cannot open ({e}): decrypt it first") from e
        raise SkipFile(f"unreadable PDF ({type(e).__name__}: {e})") from e
    base = _base_meta(path, "pdf") | {"title": str(meta_title)}
    docs = []
    for i, page in enumerate(pages):
        try:
            text = page.extract_text() or ""
        except Exception as e:  # noqa: BLE001 - a broken page is skipped, the rest of the file kept
            text = ""
            del e
        if text.strip():
            docs.append(Document(text, base | {"page": i + 1}))
    if not docs:
        raise SkipFile(f"no extractable text on {len(pages)} page(s): a scanned PDF needs OCR first")
    return docs


def _load_docx(path: Path, data: bytes) -> list[Document]:
    import io
    import zipfile

    import docx

    try:
        d = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise SkipFile(f"unreadable .docx ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - python-docx raises its own assorted errors on broken files
        raise SkipFile(f"unreadable .docx ({type(e).__name__}: {e})") from e
    lines: list[str] = []
    styles = [((p.style.name or "") if p.style is not None else "") for p in d.paragraphs]
    shift = 1 if "Title" in styles else 0  # the Title is `#`, so Heading 1 becomes `##`
    for p, style in zip(d.paragraphs, styles, strict=True):
        text = p.text.strip()
        if not text:
            continue
        if style == "Title":
            lines.append("# " + text)
        elif style.startswith("Heading") and style[7:].strip().isdigit():
            lines.append("#" * min(6, int(style[7:]) + shift) + " " + text)
        else:
            lines.append(text)
    for table in d.tables:
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    text = _require_text("\n\n".join(lines))
    title = d.core_properties.title or next((ln[2:] for ln in lines if ln.startswith("# ")), path.stem)
    return [Document(text, _base_meta(path, "docx") | {"title": title}, markup="markdown")]


def _record(obj: object, path: Path, where: str, base: dict[str, MetaValue]) -> Document:
    if isinstance(obj, str):
        obj = {"text": obj}
    if not isinstance(obj, dict):
        raise SkipFile(f"{where}: a JSON {type(obj).__name__}, expected an object with a text field")
    text = next((obj[k] for k in TEXT_KEYS if isinstance(obj.get(k), str)), None)
    title = obj.get("title") if isinstance(obj.get("title"), str) else ""
    if text is None or not (text.strip() or title.strip()):
        raise SkipFile(f"{where}: no text (looked for {', '.join(TEXT_KEYS)})")
    doc_id = next((obj[k] for k in ID_KEYS if obj.get(k) not in (None, "")), None)
    meta = dict(base)
    extra = obj.get("metadata")
    if isinstance(extra, dict):
        meta |= {k: v for k, v in extra.items() if isinstance(v, str | int | float | bool) and k not in base}
    meta["doc_id"] = str(doc_id) if doc_id is not None else where
    if title:
        meta["title"] = title
    for value in (text, title, *(v for v in meta.values() if isinstance(v, str))):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a JSON escape such as \\ud800 makes a lone surrogate
            raise SkipFile(
                f"{where}: text that is not valid Unicode ({e.reason} at character {e.start})"
            ) from e
    return Document(text if text.strip() else title, meta, context=title.strip())


def _load_json(path: Path, data: bytes) -> list[Document]:
    text = _require_text(_decode_text(data, path))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SkipFile(f"invalid JSON at line {e.lineno}: {e.msg}") from e
    items = obj if isinstance(obj, list) else [obj]
    base = _base_meta(path, "json")
    docs = [_record(o, path, f"item {i}", base) for i, o in enumerate(items)]
    if not docs:
        raise SkipFile("empty: a JSON list with no items")
    return docs


def load_jsonl(path: Path, data: bytes) -> tuple[list[Document], list[Skipped]]:
    """One document per line; bad lines come back as `Skipped` (`path:line`) and the rest load."""
    text = _decode_text(data, path)
    base = _base_meta(path, "jsonl")
    docs: list[Document] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = _record(json.loads(line), path, f"line {n}", base)
        except json.JSONDecodeError as e:
            skipped.append(Skipped(f"{path}:{n}", f"invalid JSON: {e.msg}"))
            continue
        except SkipFile as e:
            skipped.append(Skipped(f"{path}:{n}", str(e)))
            continue
        if doc.metadata["doc_id"] in seen:
            skipped.append(Skipped(f"{path}:{n}", f"duplicate id {doc.metadata['doc_id']!r}: first one kept"))
            continue
        seen.add(str(doc.metadata["doc_id"]))
        docs.append(doc)
    if not docs:
        raise SkipFile("empty: no usable JSON lines")
    return docs, skipped


def load_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[list[Document], list[Skipped]]:
    """The documents of one file and the records skipped inside it. Raises `SkipFile` when the
    whole file is unusable (type, size, content)."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise SkipFile(
            f"unsupported file type {suffix or '(none)'}: supported are {' '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SkipFile(
                f"oversized: {size:,} bytes > limit {max_bytes:,}: split it or raise --max-file-mb"
            )
        data = path.read_bytes()
    except OSError as e:
        raise SkipFile(f"unreadable: {e.strerror or e}") from e
    if not data:
        raise SkipFile("empty: 0 bytes" + (" (a 0-byte PDF)" if suffix == ".pdf" else ""))
    if suffix in JSONL_SUFFIXES:
        return load_jsonl(path, data)
    loader = {
        **dict.fromkeys(TEXT_SUFFIXES, _load_text),
        **dict.fromkeys(MARKDOWN_SUFFIXES, _load_markdown),
        **dict.fromkeys(HTML_SUFFIXES, _load_html),
        **dict.fromkeys(JSON_SUFFIXES, _load_json),
        ".pdf": _load_pdf,
        ".docx": _load_docx,
    }[suffix]
    return loader(path, data), []


def load_path(
    path: str | Path,
    *,
    root: str | Path | None = None,
    glob: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[list[Document], LoadReport]:
    """Every document under `path` (a file or a folder) and a report of what was skipped and why.

    Raises `PathNotAllowedError` / `SourceNotFoundError` for `path` itself; problems with single
    files never raise.
    """
    top = resolve_within(path, root)
    report = LoadReport()
    docs: list[Document] = []
    for f in iter_files(top, glob, Path(root) if root is not None else None):
        if isinstance(f, Skipped):
            report.skipped.append(f)
            continue
        report.files += 1
        try:
            file_docs, skipped = load_file(f, max_bytes)
        except SkipFile as e:
            report.skipped.append(Skipped(str(f), str(e)))
            continue
        docs.extend(file_docs)
        report.skipped.extend(skipped)
    report.documents = len(docs)
    return docs, report
