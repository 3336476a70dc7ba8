"""Semantic chunking: cut a document where its topic changes rather than every N tokens.

Each section (markdown sections as in `jamba_stack.retrieval.chunking`) is split into sentences; a window of
`window` sentences on each side of every gap between sentences is embedded, and the gap is a cut
when the cosine similarity of its two windows is below the `percentile`-th percentile of all the
gaps' similarities in that section. A piece still longer than `chunk_tokens` is cut again at its
least similar gap, down to single sentences (a sentence longer than the budget is cut at token
boundaries). Chunks are exact slices of the section text (no overlap), so quotes stay verbatim, and
they carry the same ids and metadata as `Chunker`'s (plus `chunking: "semantic"`).
"""

from __future__ import annotations

import re

import numpy as np

from jamba_stack.retrieval.chunking import Chunk, chunk_id, markdown_sections
from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.loaders import Document

# A sentence: up to . ! or ? followed by whitespace, or to the end of the line.
_SENTENCE = re.compile(r"\S[^\n]*?(?:[.!?](?=\s)|$)", re.MULTILINE)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text`, in order; lines end sentences."""
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text)]


class SemanticChunker:
    """Splits documents into topic-coherent chunks of at most `chunk_tokens` tokens (header
    included), counted with `embedder`'s tokenizer. Same interface as `Chunker.chunk_many`.

    `window`: sentences on each side of a gap that are compared; `percentile` (0-100): gaps whose
    similarity is below this percentile of the section's gaps are cuts (lower: fewer cuts).
    Raises `ValueError` for out-of-range settings."""

    def __init__(
        self, embedder: Embedder, chunk_tokens: int = 254, *, window: int = 1, percentile: float = 10.0
    ) -> None:
        if chunk_tokens < 16:
            raise ValueError(f"chunk_tokens={chunk_tokens} is too small: use at least 16")
        if window < 1:
            raise ValueError(f"window={window} must be at least 1")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile={percentile} must be in [0, 100]")
        self.embedder = embedder
        self.counter = embedder.token_counter()
        self.chunk_tokens = chunk_tokens
        self.window = window
        self.percentile = percentile

    def chunk_many(self, docs: list[Document]) -> list[list[Chunk]]:
        """The chunks of each document, in reading order; identical texts within one appear once."""
        out: list[list[Chunk]] = []
        for doc in docs:
            chunks: list[Chunk] = []
            seen: set[str] = set()
            sections = markdown_sections(doc.text) if doc.markup == "markdown" else [([], doc.text.strip())]
            for path, body in sections:
                if doc.context and (not path or path[0].strip() != doc.context):
                    path = [doc.context, *path]
                header = " > ".join(path)
                n_header = len(self.counter.token_starts(header))
                if n_header > self.chunk_tokens // 4:  # a runaway heading keeps its last words
                    starts = self.counter.token_starts(header)
                    header = header[starts[-(self.chunk_tokens // 4)] :]
                    n_header = len(self.counter.token_starts(header))
                for piece, n in self.split(body, self.chunk_tokens - n_header):
                    text = f"{header}\n{piece}" if header else piece
                    cid = chunk_id(doc.metadata, text)
                    if cid in seen:
                        continue
                    seen.add(cid)
                    meta = dict(doc.metadata) | {
                        "chunk_index": len(chunks),
                        "n_tokens": n + n_header,
                        "chunking": "semantic",
                    }
                    if path:
                        meta["heading"] = header
                    chunks.append(Chunk(cid, text, meta))
            out.append(chunks)
        return out

    def split(self, text: str, budget: int) -> list[tuple[str, int]]:
        """(piece, tokens) covering the sentences of `text`, each at most `budget` tokens."""
        spans = sentence_spans(text)
        if not spans:
            return []
        starts = np.asarray(self.counter.token_starts(text), dtype=np.int64)

        sims = self._gap_similarities(text, spans)  # sims[i]: between sentence i and i + 1
        cuts = set()
        if len(sims):
            threshold = np.percentile(sims, self.percentile)
            cuts = {i for i, s in enumerate(sims) if s < threshold}
        groups: list[tuple[int, int]] = []  # sentence index ranges [a, b)
        a = 0
        for i in range(len(spans)):
            if i in cuts or i == len(spans) - 1:
                groups.append((a, i + 1))
                a = i + 1
        out: list[tuple[str, int]] = []
        for a, b in groups:
            for x, y in _fit(text, spans, sims, a, b, budget, starts):
                piece = text[x:y].strip()
                if piece:
                    out.append((piece, _ntok(starts, x, y)))
        return out

    def _gap_similarities(self, text: str, spans: list[tuple[int, int]]) -> np.ndarray:
        """Cosine similarity of the `window` sentences before each gap with the `window` after."""
        n, w = len(spans), self.window
        if n < 2:
            return np.zeros(0, dtype=np.float32)
        # window j covers sentences j .. j + w - 1; the gap after sentence i compares windows i-w+1 and i+1
        windows = [text[spans[j][0] : spans[min(j + w, n) - 1][1]] for j in range(n)]
        vecs = self.embedder.embed_documents(windows)  # unit rows: the dot product is the cosine
        return np.array([float(vecs[max(i - w + 1, 0)] @ vecs[i + 1]) for i in range(n - 1)])


def _ntok(starts: np.ndarray, a: int, b: int) -> int:
    """Tokens that start inside [a, b): counts of adjacent ranges add up exactly."""
    return int(np.searchsorted(starts, b) - np.searchsorted(starts, a))


def _fit(
    text: str,
    spans: list[tuple[int, int]],
    sims: np.ndarray,
    a: int,
    b: int,
    budget: int,
    starts: np.ndarray,
) -> list[tuple[int, int]]:
    """Character ranges covering sentences [a, b), each at most `budget` tokens: cut at the least
    similar gap until every piece fits; one sentence over budget is cut at token starts."""
    x, y = spans[a][0], spans[b - 1][1]
    if _ntok(starts, x, y) <= budget:
        return [(x, y)]
    if b - a == 1:
        return _cut_words(text, x, y, budget, starts)
    gap = a + int(np.argmin(sims[a : b - 1]))  # the cut goes after sentence `gap`
    return _fit(text, spans, sims, a, gap + 1, budget, starts) + _fit(
        text, spans, sims, gap + 1, b, budget, starts
    )


def _cut_words(text: str, x: int, y: int, budget: int, starts: np.ndarray) -> list[tuple[int, int]]:
    """One sentence over budget, [x, y), in pieces of at most `budget` tokens, each as long as it
    can be; cuts fall on token starts after whitespace (a word is not split unless it alone is
    over budget: "w15" is two word pieces, and cutting between them would lose it)."""
    lo, hi = int(np.searchsorted(starts, x)), int(np.searchsorted(starts, y))
    out = []
    i = lo
    while hi - i > budget:
        j = i + budget  # the first token of the next piece, at the latest
        while j > i + 1 and not text[int(starts[j]) - 1].isspace():
            j -= 1
        if j == i + 1 and not text[int(starts[j]) - 1].isspace():
            j = i + budget  # one word longer than the budget: cut inside it
        out.append((int(starts[i]) if i > lo else x, int(starts[j])))
        i = j
    out.append((int(starts[i]) if i > lo else x, y))
    return out
