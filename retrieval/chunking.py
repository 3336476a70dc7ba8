"""`Document` -> `Chunk`s: token-aware recursive splitting with overlap.

Tokens are counted with the embedding model's own tokenizer, so a chunk never exceeds what the
model reads (nothing is silently truncated at embedding time). Markdown (and HTML/docx, which the
loaders turn into markdown) is first cut at headings and every chunk starts with its heading path
("Guide > Install > Linux"); a PDF arrives one page per `Document`, so chunks never cross pages.

A chunk's id is a hash of its source (path, document id, page) and its text: re-chunking an
unchanged document gives the same ids, which is what makes ingestion idempotent.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jamba_stack.retrieval.loaders import Document, MetaValue

# Coarse to fine; each is kept at the end of the piece before it.
SEPARATORS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class TokenCounter(Protocol):
    """Tokenizes the way the embedding model will (no special tokens)."""

    def token_starts(self, text: str) -> list[int]:
        """The character offset where each token of `text` starts, ascending."""
        ...

    def token_starts_many(self, texts: list[str]) -> list[list[int]]:
        """`token_starts` of each text (implementations may run them in parallel)."""
        ...


def count_tokens(counter: TokenCounter, text: str) -> int:
    return len(counter.token_starts(text))


class HFTokenCounter:
    """A `tokenizers.Tokenizer` (or a `tokenizer.json` path) as a `TokenCounter`."""

    def __init__(self, tokenizer: object) -> None:
        from tokenizers import Tokenizer

        if isinstance(tokenizer, str):
            tokenizer = Tokenizer.from_file(tokenizer)
        tok = Tokenizer.from_str(tokenizer.to_str())  # a private copy: no truncation or padding
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok

    def token_starts(self, text: str) -> list[int]:
        return [a for a, _ in self._tok.encode(text, add_special_tokens=False).offsets]

    def token_starts_many(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [[a for a, _ in e.offsets] for e in self._tok.encode_batch(texts, add_special_tokens=False)]


class RegexTokenCounter:
    """Words and punctuation marks: a stand-in when no tokenizer is at hand (remote embedders)."""

    _TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)

    def token_starts(self, text: str) -> list[int]:
        return [m.start() for m in self._TOKEN.finditer(text)]

    def token_starts_many(self, texts: list[str]) -> list[list[int]]:
        return [self.token_starts(t) for t in texts]


@dataclass(frozen=True)
class Chunk:
    """What the store holds: `id` (hash of source + text), the text, and the document's metadata
    plus `chunk_index`, `n_tokens` and `heading` (the heading path, when the document has one)."""

    id: str
    text: str
    metadata: dict[str, MetaValue]


def chunk_id(metadata: dict[str, MetaValue], text: str) -> str:
    """Hash of the chunk's source (path, document id, page) and its text."""
    key = "\x00".join(
        (
            str(metadata.get("source", "")),
            str(metadata.get("doc_id", "")),
            str(metadata.get("page", "")),
            text,
        )
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def markdown_sections(text: str) -> list[tuple[list[str], str]]:
    """(heading path, body) per section; `#` lines inside code fences are not headings."""
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        b = "\n".join(body).strip()
        if b:
            sections.append(([h for _, h in path], b))
        body.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2))]
        else:
            body.append(line)
    flush()
    return sections


class ChunkerLike(Protocol):
    """What ingest needs of a chunker (`Chunker`, `SemanticChunker`)."""

    def chunk_many(self, docs: list[Document]) -> list[list[Chunk]]:
        """The chunks of each document, in reading order."""
        ...


class Chunker:
    """Splits documents into chunks of at most `chunk_tokens` tokens (header included) with about
    `overlap_tokens` of overlap between neighbours of the same section.

    Each section is tokenized once; a piece's token count is the number of tokens that start
    inside it, so counts add up exactly and cuts fall on token boundaries.
    """

    def __init__(self, counter: TokenCounter, chunk_tokens: int = 254, overlap_tokens: int = 32) -> None:
        if chunk_tokens < 16:
            raise ValueError(f"chunk_tokens={chunk_tokens} is too small: use at least 16")
        if not 0 <= overlap_tokens < chunk_tokens // 2:
            raise ValueError(f"overlap_tokens={overlap_tokens} must be in [0, chunk_tokens/2)")
        self.counter = counter
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def chunk(self, doc: Document) -> list[Chunk]:
        """The chunks of one document, in reading order; identical texts within it appear once."""
        return self.chunk_many([doc])[0]

    def chunk_many(self, docs: list[Document]) -> list[list[Chunk]]:
        """`chunk` of each document, tokenizing all of them in one batch."""
        plans: list[tuple[int, list[str], str, str]] = []  # (doc index, heading path, header, body)
        for i, doc in enumerate(docs):
            sections = markdown_sections(doc.text) if doc.markup == "markdown" else [([], doc.text.strip())]
            for path, body in sections:
                if doc.context and (not path or path[0].strip() != doc.context):
                    path = [doc.context, *path]
                plans.append((i, path, " > ".join(path), body))
        starts = self.counter.token_starts_many([p[3] for p in plans] + [p[2] for p in plans])
        out: list[list[Chunk]] = [[] for _ in docs]
        seen: list[set[str]] = [set() for _ in docs]
        for j, (i, path, header, body) in enumerate(plans):
            doc = docs[i]
            h_starts = starts[len(plans) + j]
            if len(h_starts) > self.chunk_tokens // 4:  # a runaway heading keeps its last words
                header = header[h_starts[-(self.chunk_tokens // 4)] :]
                h_starts = self.counter.token_starts(header)
            for piece, n in self._split(body, self.chunk_tokens - len(h_starts), starts[j]):
                text = f"{header}\n{piece}" if header else piece
                cid = chunk_id(doc.metadata, text)
                if cid in seen[i]:
                    continue
                seen[i].add(cid)
                meta = dict(doc.metadata) | {"chunk_index": len(out[i]), "n_tokens": n + len(h_starts)}
                if path:
                    meta["heading"] = " > ".join(path)
                out[i].append(Chunk(cid, text, meta))
        return out

    def _split(self, text: str, budget: int, token_starts: list[int]) -> list[tuple[str, int]]:
        """(piece, tokens) covering `text`, each at most `budget` tokens."""
        starts = np.asarray(token_starts, dtype=np.int64)
        if len(starts) == 0:
            return [(text.strip(), 0)] if text.strip() else []
        if len(starts) <= budget:
            return [(text.strip(), len(starts))]

        def ntok(a: int, b: int) -> int:
            return int(np.searchsorted(starts, b) - np.searchsorted(starts, a))

        spans = self._spans(text, 0, len(text), budget, 0, ntok, starts)
        out = []
        for a, b in self._merge(spans, budget, ntok):
            piece = text[a:b].strip()
            if piece:
                out.append((piece, ntok(a, b)))
        return out

    def _spans(
        self, text: str, a: int, b: int, budget: int, level: int, ntok, starts: np.ndarray
    ) -> list[tuple[int, int]]:
        if ntok(a, b) <= budget:
            return [(a, b)]
        for i in range(level, len(SEPARATORS)):
            sep = SEPARATORS[i]
            segment = text[a:b]
            if sep not in segment:
                continue
            cuts = [a]
            pos = segment.find(sep)
            while pos != -1:
                cuts.append(a + pos + len(sep))
                pos = segment.find(sep, pos + len(sep))
            cuts.append(b)
            out: list[tuple[int, int]] = []
            for x, y in zip(cuts, cuts[1:], strict=False):
                if y > x:
                    out.extend(self._spans(text, x, y, budget, i + 1, ntok, starts))
            return out
        # No separator left: cut at every `budget`-th token start.
        lo, hi = np.searchsorted(starts, a), np.searchsorted(starts, b)
        cuts = [a, *[int(starts[j]) for j in range(lo + budget, hi, budget)], b]
        return [(x, y) for x, y in zip(cuts, cuts[1:], strict=False) if y > x]

    def _merge(self, spans: list[tuple[int, int]], budget: int, ntok) -> list[tuple[int, int]]:
        """Greedy merge of consecutive spans up to `budget` tokens; each chunk after the first
        starts with the trailing spans of the one before, up to `overlap_tokens`."""
        chunks: list[tuple[int, int]] = []
        cur: list[tuple[int, int]] = []
        for a, b in spans:
            if cur and ntok(cur[0][0], b) > budget:
                chunks.append((cur[0][0], cur[-1][1]))
                keep: list[tuple[int, int]] = []
                for s in reversed(cur):
                    if ntok(s[0], cur[-1][1]) > self.overlap_tokens:
                        break
                    keep.insert(0, s)
                cur = keep
                while cur and ntok(cur[0][0], b) > budget:
                    cur.pop(0)
            cur.append((a, b))
        if cur:
            chunks.append((cur[0][0], cur[-1][1]))
        return chunks
