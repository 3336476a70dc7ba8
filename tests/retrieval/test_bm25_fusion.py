"""BM25 (bm25s + stemming) with metadata filters, its atomic persistence, and rank fusion."""

from __future__ import annotations

from pathlib import Path

import pytest

from jamba_stack.retrieval.bm25 import BM25_PARAMS, BM25Index, tokenize
from jamba_stack.retrieval.errors import InvalidQueryError
from jamba_stack.retrieval.fusion import convex_fusion, reciprocal_rank_fusion

TEXTS = ["The cats are running home", "A dog runs fast", "Cats and dogs", "Stock markets fell"]
METAS = [{"source": "a", "page": 1}, {"source": "a", "page": 2}, {"source": "b", "page": 1}, {"source": "c"}]


def build() -> BM25Index:
    return BM25Index.build(["c0", "c1", "c2", "c3"], TEXTS, METAS, collection_id="x")


def test_stemmed_search_and_filters() -> None:
    idx = build()
    assert [cid for cid, _ in idx.search("cat running", 10)][:2] == ["c0", "c2"]  # cats->cat, running->run
    assert idx.search("the and", 10) == []  # stopwords only
    assert idx.search("zebra", 10) == []  # unknown word
    assert {cid for cid, _ in idx.search("dog", 10, {"source": "a"})} == {"c1"}
    assert {cid for cid, _ in idx.search("cat dog", 10, {"page": {"$gte": 2}})} == {"c1"}
    assert {cid for cid, _ in idx.search("cat dog", 10, {"$or": [{"source": "b"}, {"page": 2}]})} == {
        "c1",
        "c2",
    }
    assert {cid for cid, _ in idx.search("cat dog", 10, {"source": {"$in": ["b"]}})} == {"c2"}
    assert {cid for cid, _ in idx.search("markets", 10, {"page": {"$ne": 1}})} == {"c3"}
    with pytest.raises(InvalidQueryError, match="unknown filter operator"):
        idx.search("cat", 5, {"page": {"$regex": "x"}})
    with pytest.raises(InvalidQueryError, match="needs a number"):
        idx.search("cat", 5, {"page": {"$gt": "1"}})


def test_index_built_from_ids_scores_as_one_built_from_terms() -> None:
    """The build indexes token ids (`tokenize_ids`); scores equal those of bm25s indexing the
    terms themselves, the way the index was built before."""
    import bm25s

    texts = [*TEXTS, "Ünïcode café naïve straße", "x1 42 a_b __init__ cats' dogs's running-runs"]
    idx = BM25Index.build([f"c{i}" for i in range(len(texts))], texts, [{}] * len(texts))
    ref = bm25s.BM25(k1=BM25_PARAMS["k1"], b=BM25_PARAMS["b"], method=BM25_PARAMS["method"])
    ref.index(tokenize(texts), show_progress=False)
    for query in ("cat running", "dogs", "café straße", "a_b init runs", "stock market"):
        terms = [t for t in tokenize([query])[0] if t in ref.vocab_dict]
        assert terms
        expected = ref.get_scores(terms)
        got = dict(idx.search(query, len(texts)))
        assert got  # the query matches something
        assert {f"c{i}": float(v) for i, v in enumerate(expected) if v > 0} == pytest.approx(got)


def test_save_load_is_atomic_and_replaces(tmp_path: Path) -> None:
    d = tmp_path / "bm25"
    assert BM25Index.load(d) is None
    build().save(d)
    BM25Index.build(["z"], ["zebra crossing"], [{}], collection_id="x").save(d)
    idx = BM25Index.load(d)
    assert idx is not None and idx.ids == ["z"] and idx.search("zebra", 3)[0][0] == "z"
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith("g")) == ["CURRENT"]
    assert len([p for p in d.iterdir() if p.name.startswith("g")]) == 1  # old generation gone
    empty = BM25Index.build([], [], [], collection_id="x")
    empty.save(d)
    assert BM25Index.load(d).search("zebra", 3) == []


def test_rrf() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert [d for d, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    weighted = reciprocal_rank_fusion([["a", "b"], ["b", "a"]], k=1, weights=[1.0, 3.0])
    assert [d for d, _ in weighted] == ["b", "a"]
    assert [d for d, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]  # tie: first seen
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


def test_convex_fusion() -> None:
    fused = convex_fusion([{"a": 0.9, "b": 0.5, "c": 0.1}, {"c": 12.0, "d": 2.0}], weights=[0.5, 0.5])
    assert dict(fused) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5, "d": 0.0})
    assert [d for d, _ in fused][:2] == ["a", "c"]  # tie: first seen
    assert convex_fusion([{"x": 3.0}, {}]) == [("x", 0.5)]
    with pytest.raises(ValueError):
        convex_fusion([{"a": 1.0}], weights=[1.0, 1.0])
