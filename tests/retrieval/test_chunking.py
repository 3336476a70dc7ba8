"""Chunking with the embedding model's own tokenizer: limits, overlap, headings, pages, ids."""

from __future__ import annotations

import pytest

from jamba_stack.retrieval.chunking import (
    Chunker,
    HFTokenCounter,
    RegexTokenCounter,
    chunk_id,
    markdown_sections,
)
from jamba_stack.retrieval.loaders import Document


@pytest.fixture(scope="module")
def counter() -> HFTokenCounter:
    from jamba_stack.retrieval.embeddings import default_model_dir

    return HFTokenCounter(str(default_model_dir() / "tokenizer.json"))


def doc(text: str, markup: str = "plain", **meta: object) -> Document:
    return Document(text, {"source": "/d/a.md", "doc_id": "/d/a.md", **meta}, markup=markup)  # type: ignore[arg-type]


def test_chunks_fit_the_model_and_overlap(counter: HFTokenCounter) -> None:
    sentences = [f"Sentence number {i} mentions hemoglobin and mitochondria briefly." for i in range(120)]
    chunks = Chunker(counter, chunk_tokens=64, overlap_tokens=16).chunk(doc(" ".join(sentences)))
    assert len(chunks) > 5
    for c in chunks:
        real = len(counter.token_starts(c.text))
        assert real == c.metadata["n_tokens"] <= 64
    for a, b in zip(chunks, chunks[1:], strict=False):
        last = a.text.split(". ")[-1].rstrip(".")
        assert last in b.text  # the last sentence of a chunk opens the next one
    joined = " ".join(c.text for c in chunks)
    assert all(s[:-1] in joined for s in sentences)  # nothing lost
    assert [c.metadata["chunk_index"] for c in chunks] == list(range(len(chunks)))


def test_unbroken_text_is_cut_at_token_boundaries(counter: HFTokenCounter) -> None:
    text = "x" * 5000 + " " + "pneumonoultramicroscopicsilicovolcanoconiosis" * 40
    chunks = Chunker(counter, chunk_tokens=32, overlap_tokens=0).chunk(doc(text))
    assert all(len(counter.token_starts(c.text)) <= 32 for c in chunks)
    assert "".join(c.text.replace(" ", "") for c in chunks) == text.replace(" ", "")


def test_markdown_headings_start_every_chunk(counter: HFTokenCounter) -> None:
    body = " ".join(f"Step {i} installs a package." for i in range(60))
    md = f"# Guide\n\nIntro.\n\n## Install\n\n{body}\n\n```\n# not a heading\n```\n\n## Use\n\nRun it."
    chunks = Chunker(counter, chunk_tokens=48, overlap_tokens=8).chunk(doc(md, "markdown", title="Guide"))
    heads = [c.metadata["heading"] for c in chunks]
    assert heads[0] == "Guide" and heads[-1] == "Guide > Use"
    install = [c for c in chunks if c.metadata["heading"] == "Guide > Install"]
    assert len(install) > 2 and all(c.text.startswith("Guide > Install\n") for c in install)
    assert any("# not a heading" in c.text for c in install)  # a code comment, not a section
    assert all(c.metadata["n_tokens"] <= 48 for c in chunks)
    assert markdown_sections("no headings at all") == [([], "no headings at all")]


def test_record_title_prefixes_each_chunk(counter: HFTokenCounter) -> None:
    d = Document(
        " ".join(["Alpha beta gamma delta."] * 80),
        {"source": "/c.jsonl", "doc_id": "42", "title": "A Title"},
        context="A Title",
    )
    chunks = Chunker(counter, chunk_tokens=40, overlap_tokens=0).chunk(d)
    assert len(chunks) > 1 and all(c.text.startswith("A Title\n") for c in chunks)
    assert {c.metadata["doc_id"] for c in chunks} == {"42"}


def test_ids_are_stable_and_depend_on_source_and_text(counter: HFTokenCounter) -> None:
    ch = Chunker(counter, chunk_tokens=40, overlap_tokens=0)
    text = " ".join(f"Claim {i} is about T cells." for i in range(30))
    a = [c.id for c in ch.chunk(doc(text))]
    assert a == [c.id for c in ch.chunk(doc(text))]
    other = Document(text, {"source": "/d/b.md", "doc_id": "/d/b.md"})
    assert not set(a) & {c.id for c in ch.chunk(other)}
    edited = ch.chunk(doc(text.replace("Claim 29", "Claim 99")))
    assert len(set(a) & {c.id for c in edited}) == len(a) - 1  # only the last chunk changed
    assert chunk_id({"source": "s", "doc_id": "d", "page": 1}, "t") != chunk_id(
        {"source": "s", "doc_id": "d", "page": 2}, "t"
    )


def test_pages_never_share_a_chunk(counter: HFTokenCounter) -> None:
    pages = [
        Document(f"Page {p} text. " * 5, {"source": "/r.pdf", "doc_id": "/r.pdf", "page": p}) for p in (1, 2)
    ]
    per_page = Chunker(counter, chunk_tokens=200, overlap_tokens=0).chunk_many(pages)
    assert [[c.metadata["page"] for c in cs] for cs in per_page] == [[1], [2]]


def test_regex_counter_is_a_usable_fallback() -> None:
    chunks = Chunker(RegexTokenCounter(), chunk_tokens=20, overlap_tokens=4).chunk(doc("word, " * 100))
    assert all(c.metadata["n_tokens"] <= 20 for c in chunks)
    with pytest.raises(ValueError, match="overlap"):
        Chunker(RegexTokenCounter(), chunk_tokens=20, overlap_tokens=15)
