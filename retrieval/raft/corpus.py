"""The corpus side of RAFT: chunks (made by the RAG ingest pipeline, so they are the chunks the RAG
retriever returns at serving time), questions (from the teacher or a file), and document sets
(oracle + distractors: hard negatives from the hybrid retriever mixed with random chunks)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.errors import InvalidQueryError, QueryTooLongError
from jamba_stack.retrieval.raft.errors import QuestionsFileError
from jamba_stack.retrieval.raft.quotes import contains_answer, normalize_question, normalize_ws
from jamba_stack.retrieval.search import Retriever


@dataclass(frozen=True)
class CorpusChunk:
    """One chunk of the corpus as the store holds it."""

    id: str
    text: str
    source: str
    doc_id: str
    index: int
    # `source` relative to the corpus root, as exports show it: a dataset should not carry the
    # path of the machine that built it.
    shown_source: str = ""

    def as_document(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text, "source": self.shown_source or self.source}


@dataclass(frozen=True)
class QA:
    """A question about one chunk (its oracle), with the gold answer ("" when none is known)."""

    qid: str
    question: str
    answer: str
    chunk_id: str
    origin: str  # "teacher" or "file"


@dataclass
class DocSet:
    """The documents one row shows, in order, and where each distractor came from."""

    documents: list[CorpusChunk]
    oracle_present: bool
    oracle_index: int | None
    kinds: list[str] = field(default_factory=list)  # per document: "oracle", "hard" or "random"


CHUNKINGS = ("tokens", "semantic")


def collection_name(
    docs: Path, embedder: Embedder, chunk_tokens: int, overlap_tokens: int, chunking: str = "tokens"
) -> str:
    """A collection per corpus and chunking, so a RAFT run never mixes in another corpus's chunks."""
    key = f"{docs.resolve()}\x00{embedder.name}\x00{chunk_tokens}\x00{overlap_tokens}"
    if chunking != "tokens":  # token chunking keeps the names it always had
        key += f"\x00{chunking}"
    return "raft-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_corpus(
    docs: Path,
    *,
    data_dir: Path,
    embedder: Embedder,
    chroma_url: str = "",
    collection: str | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int = 32,
    chunking: str = "tokens",
    semantic_percentile: float = 10.0,
    progress: bool = False,
) -> tuple[list[CorpusChunk], Retriever]:
    """Ingest `docs` (a file, folder or BEIR corpus.jsonl) with the RAG pipeline and return its
    chunks in a fixed order (source, chunk index, id) with a hybrid retriever over them.

    `chunk_tokens`: default the embedder's window, the RAG default. `chunking`: "tokens" (the RAG
    ingest's token chunker, with `overlap_tokens`) or "semantic" (`SemanticChunker`: cuts where
    the topic changes, below `semantic_percentile`, chunks still at most `chunk_tokens`; no
    overlap). Raises `ValueError` for another `chunking`, and what `ingest` raises."""
    from jamba_stack.retrieval.ingest import ingest
    from jamba_stack.retrieval.search import load_bm25
    from jamba_stack.retrieval.store import Store

    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking={chunking!r} is not one of {', '.join(CHUNKINGS)}")
    tokens = chunk_tokens or embedder.chunk_tokens
    name = collection or collection_name(docs, embedder, tokens, overlap_tokens, chunking)
    chunker = None
    if chunking == "semantic":
        from jamba_stack.retrieval.semantic_chunking import SemanticChunker

        chunker = SemanticChunker(embedder, tokens, percentile=semantic_percentile)
    ingest(
        docs,
        name,
        data_dir=data_dir,
        chroma_url=chroma_url,
        embedder=embedder,
        chunk_tokens=tokens,
        overlap_tokens=overlap_tokens,
        chunker=chunker,
        progress=progress,
    )

    col = Store(data_dir, chroma_url).open(name, embedder_name=embedder.name, dim=embedder.dim)
    retriever = Retriever(col, embedder, load_bm25(col))
    root = docs.resolve() if docs.is_dir() else docs.resolve().parent
    chunks: list[CorpusChunk] = []
    for ids, texts, metas in col.iter_all():
        for cid, text, meta in zip(ids, texts, metas, strict=True):
            source = str(meta.get("source", ""))
            chunks.append(
                CorpusChunk(
                    cid,
                    text,
                    source,
                    str(meta.get("doc_id", source)),
                    int(meta.get("chunk_index", 0)),
                    _relative(source, root),
                )
            )
    chunks.sort(key=lambda c: (c.source, c.doc_id, c.index, c.id))
    return chunks, retriever


def qa_id(question: str, chunk_id: str) -> str:
    return hashlib.sha256(f"{normalize_question(question)}\x00{chunk_id}".encode()).hexdigest()[:16]


def read_questions_file(path: Path, chunks: list[CorpusChunk]) -> tuple[list[QA], int]:
    """Questions from a JSONL file, one `{"question", "answer"?, "source" | "doc_id"}` per line,
    each tied to a chunk of its document: the first chunk that contains the answer, else the chunk
    sharing most words with the question. Returns (questions, lines whose document is not in the
    corpus). Raises `QuestionsFileError` for an unreadable file or a malformed line."""
    by_doc: dict[str, list[CorpusChunk]] = {}
    by_source: dict[str, list[CorpusChunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
        by_source.setdefault(c.source, []).append(c)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise QuestionsFileError(f"cannot read questions file {path}: {e.strerror or e}") from e
    out: list[QA] = []
    unmatched = 0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj: dict[str, Any] = json.loads(line)
            question = str(obj["question"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise QuestionsFileError(
                f'{path}:{n}: expected a JSON object with "question", "answer" and "source" or "doc_id" ({e})'
            ) from e
        if not question or not ("source" in obj or "doc_id" in obj):
            raise QuestionsFileError(f'{path}:{n}: needs a non-empty "question" and a "source" or "doc_id"')
        answer = str(obj.get("answer") or "").strip()
        cands = (
            by_doc.get(str(obj["doc_id"]), [])
            if "doc_id" in obj
            else _by_source(by_source, str(obj["source"]))
        )
        if not cands:
            unmatched += 1
            continue
        oracle = next(
            (c for c in cands if answer and normalize_ws(answer).lower() in normalize_ws(c.text).lower()),
            None,
        )
        if oracle is None:
            words = set(normalize_question(question).split())
            oracle = max(cands, key=lambda c: len(words & set(normalize_question(c.text).split())))
        out.append(QA(qa_id(question, oracle.id), question, answer, oracle.id, "file"))
    return out, unmatched


def _relative(source: str, root: Path) -> str:
    """`source` relative to `root` when it lies under it (else unchanged: e.g. a BEIR doc id)."""
    try:
        return Path(source).resolve().relative_to(root).as_posix()
    except (ValueError, OSError):
        return source


def _by_source(by_source: dict[str, list[CorpusChunk]], source: str) -> list[CorpusChunk]:
    """Chunks of `source`: an exact path, or a path ending with it ("docs/a.md" matches "/x/docs/a.md")."""
    if source in by_source:
        return by_source[source]
    tail = "/" + source.lstrip("./")
    return [c for s, cs in by_source.items() if s.endswith(tail) for c in cs]


def dedup(questions: list[QA]) -> tuple[list[QA], int]:
    """Questions with duplicates (same normalised text, whatever the chunk) removed; first kept."""
    seen: set[str] = set()
    out = []
    for qa in questions:
        key = normalize_question(qa.question)
        if key and key not in seen:
            seen.add(key)
            out.append(qa)
    return out, len(questions) - len(out)


def hard_candidates(retriever: Retriever, questions: list[str], n: int) -> list[list[str]]:
    """The hybrid retriever's top `n` chunk ids per question (the dense queries in one batch); a
    question the retriever refuses (too long, empty) gets none."""
    if not questions:
        return []
    n = max(1, min(n, retriever.collection.count()))
    try:
        return [[h.chunk_id for h in hits] for hits in retriever.search_many(questions, n)]
    except (InvalidQueryError, QueryTooLongError):
        out = []
        for q in questions:
            try:
                out.append([h.chunk_id for h in retriever.search(q, n)])
            except (InvalidQueryError, QueryTooLongError):
                out.append([])
        return out


def choose_documents(
    qa: QA,
    oracle: CorpusChunk,
    hard: list[str],
    chunks: list[CorpusChunk],
    by_id: dict[str, CorpusChunk],
    *,
    distractors: int,
    p: float,
    hard_ratio: float,
    not_same_source: bool,
    rng: random.Random,
) -> DocSet:
    """The row's documents: the oracle with probability `p` plus `distractors` others (one more
    when the oracle is left out, so every row shows as many documents), shuffled.

    A distractor is never the oracle (nor a chunk with the oracle's text), never contains the gold
    answer, and with `not_same_source` never comes from the oracle's document (its file, or its
    record in a JSONL corpus). `hard_ratio` of them are
    the retriever's best-ranked (`hard`, in rank order), the rest drawn at random; when either pool
    runs short the other fills in."""
    keep_oracle = rng.random() < p  # drawn first: the oracle decision depends on nothing else
    want = distractors if keep_oracle else distractors + 1
    oracle_text = normalize_ws(oracle.text)

    def allowed(c: CorpusChunk) -> bool:
        return (
            c.id != oracle.id
            and normalize_ws(c.text) != oracle_text
            and not contains_answer(c.text, qa.answer)
            and not (not_same_source and c.doc_id == oracle.doc_id)
        )

    hard_pool = [by_id[cid] for cid in hard if cid in by_id and allowed(by_id[cid])]
    n_hard = min(round(want * hard_ratio), len(hard_pool))
    picked = hard_pool[:n_hard]
    kinds = ["hard"] * len(picked)
    taken = {c.id for c in picked}
    rand_pool = [c for c in chunks if c.id not in taken and allowed(c)]
    n_rand = min(want - len(picked), len(rand_pool))
    for c in rng.sample(rand_pool, n_rand):
        picked.append(c)
        kinds.append("random")
        taken.add(c.id)
    for c in hard_pool[n_hard:]:  # the random pool ran short: more hard negatives
        if len(picked) >= want:
            break
        if c.id not in taken:
            picked.append(c)
            kinds.append("hard")
            taken.add(c.id)
    if keep_oracle:
        picked.append(oracle)
        kinds.append("oracle")
    order = list(range(len(picked)))
    rng.shuffle(order)
    docs = [picked[i] for i in order]
    kinds = [kinds[i] for i in order]
    index = kinds.index("oracle") if keep_oracle else None
    return DocSet(docs, keep_oracle, index, kinds)
