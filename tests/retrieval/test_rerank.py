"""Rerankers (retrieval/rerank.py): the interface, the offline MaxSim reranker on the real
all-MiniLM-L6-v2, the cross-encoder's offline errors, and both plugged into search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jamba_stack.retrieval.errors import RerankerUnavailableError
from jamba_stack.retrieval.hits import Hit
from jamba_stack.retrieval.rerank import (
    MAXSIM_ALPHA,
    MAXSIM_WEIGHTING,
    CrossEncoderReranker,
    MaxSimReranker,
    Reranker,
    TokenVectors,
    blend,
    make_reranker,
    supports_maxsim,
)

PASSAGES = [
    "Mitochondria produce ATP, the energy currency of the cell.",
    "Hemoglobin in red blood cells carries oxygen from the lungs to the tissues.",
    "The thermostat keeps the room at 21 degrees.",
]


class WordOverlap(Reranker):
    """A real (if simple) reranker: how many query words the passage contains."""

    name = "overlap"

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        words = set(query.lower().split())
        return np.array([len(words & set(t.lower().split())) for t in texts], dtype=np.float32)


def _hits(texts: list[str]) -> list[Hit]:
    return [
        Hit(i + 1, f"c{i}", f"d{i}", f"/x/{i}.txt", 1.0 - 0.1 * i, t, {"doc_id": f"d{i}"})
        for i, t in enumerate(texts)
    ]


@pytest.fixture(scope="module")
def maxsim(embedder) -> MaxSimReranker:  # noqa: ANN001 - fixture
    return MaxSimReranker(embedder)


def test_rerank_reorders_renumbers_and_keeps_first_stage() -> None:
    hits = _hits(["red apples", "green pears and apples", "apples pears plums"])
    out = WordOverlap().rerank("pears plums apples", hits)
    assert [h.chunk_id for h in out] == ["c2", "c1", "c0"]
    assert [h.rank for h in out] == [1, 2, 3] and [h.score for h in out] == [3.0, 2.0, 1.0]
    assert out[0].metadata["first_stage_rank"] == 3 and out[0].metadata["first_stage_score"] == pytest.approx(
        0.8
    )
    assert hits[2].metadata == {"doc_id": "d2"}  # the input is not changed
    # Ties keep the first-stage order; top_k cuts.
    tie = WordOverlap().rerank("zzz", hits, top_k=2)
    assert [h.chunk_id for h in tie] == ["c0", "c1"]
    assert WordOverlap().rerank("q", []) == []


def test_blend_is_minmax_weighted() -> None:
    r = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    f = np.array([0.9, 0.1, 0.5], dtype=np.float32)
    assert blend(r, f, 1.0).tolist() == [0.0, 1.0, 0.5]
    assert blend(r, f, 0.0).tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert blend(np.ones(3), f, 1.0).tolist() == [0.0, 0.0, 0.0]  # a constant list carries no signal


def test_maxsim_token_vectors_and_scores(maxsim: MaxSimReranker) -> None:
    vecs = maxsim.token_embeddings(["hello world", "!!!", PASSAGES[0]])
    assert vecs[0].shape == (2, 384)  # [CLS], [SEP] and punctuation left out
    assert vecs[1].shape == (1, 384)  # nothing but punctuation: the [CLS] vector stands in
    assert np.allclose(np.linalg.norm(vecs[2], axis=1), 1.0, atol=1e-5)
    s = maxsim.score("What carries oxygen in the blood?", PASSAGES)
    assert s.shape == (3,) and s.dtype == np.float32
    assert int(np.argmax(s)) == 1 and s[1] > s[2]
    # MaxSim of a text with itself is 1: every token finds itself.
    assert maxsim.score(PASSAGES[2], [PASSAGES[2]])[0] == pytest.approx(1.0, abs=1e-5)


def test_token_vectors_carry_the_wordpiece_ids(maxsim: MaxSimReranker) -> None:
    tv = maxsim.token_vectors(["hello, world", PASSAGES[1]])
    tok = maxsim.embedder.model.tokenizer  # the fixture is the float32 sentence-transformers one
    assert tv[0].ids.tolist() == tok.convert_tokens_to_ids(["hello", "world"])
    assert tv[1].ids.shape == (tv[1].vecs.shape[0],)
    assert np.array_equal(maxsim.token_embeddings([PASSAGES[1]])[0], tv[1].vecs)


def test_local_idf_weighs_tokens_the_candidates_share_least() -> None:
    q = np.array([7, 8, 9])
    w = MaxSimReranker.local_idf(q, [np.array([7, 8]), np.array([7, 1]), np.array([7, 2])])
    # BM25's idf among the 3 passages: df 3, 1 and 0
    assert w.tolist() == pytest.approx([np.log1p(0.5 / 3.5), np.log1p(2.5 / 1.5), np.log1p(3.5 / 0.5)])
    assert (w > 0).all() and w[0] < w[1] < w[2]


def test_weighted_maxsim_is_a_weighted_mean_of_best_matches() -> None:
    e = np.eye(3, dtype=np.float32)
    query = e[[0, 1]]  # two query tokens
    passages = [e[[0]], e[[1, 2]]]  # the first matches token 0 only, the second token 1 only
    assert MaxSimReranker.maxsim(query, passages).tolist() == [0.5, 0.5]
    assert MaxSimReranker.maxsim(query, passages, np.array([3.0, 1.0])).tolist() == [0.75, 0.25]
    assert MaxSimReranker.maxsim(query, passages, np.array([1.0, 1.0])).tolist() == [0.5, 0.5]


def test_maxsim_scores_passages_of_any_length_together_as_one_by_one() -> None:
    # All candidates go through one matmul; each passage's score must be its own best matches,
    # whatever the lengths around it (one token, many, the last one short).
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, 8)).astype(np.float32)
    passages = [rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 7, 3, 12, 1)]
    weights = np.array([1.0, 0.0, 2.0, 0.5, 3.0])
    for w in (None, weights):
        alone = [MaxSimReranker.maxsim(query, [p], w)[0] for p in passages]
        assert MaxSimReranker.maxsim(query, passages, w).tolist() == pytest.approx(alone, abs=1e-6)
    ids = [np.array([4]), np.array([1, 2, 4]), np.array([9, 9]), np.array([2]), np.array([1])]
    df = np.array([2.0, 2.0, 0.0])  # query tokens 1, 4, 3: in passages {1, 4}, {0, 1}, none
    want = np.log1p((5 - df + 0.5) / (df + 0.5))
    assert MaxSimReranker.local_idf(np.array([1, 4, 3]), ids).tolist() == pytest.approx(want.tolist())
    assert MaxSimReranker.maxsim(query, []).shape == (0,)


def test_idf_weighting_favours_the_passage_with_the_rare_query_word(embedder) -> None:  # noqa: ANN001
    # Every candidate matches "patients" and "trial"; only one also matches "warfarin", the word that
    # tells them apart. IDF weighting (the default) lifts that passage over the plain mean.
    passages = [
        "In this trial, patients with diabetes received insulin and patients were followed for trial outcomes.",
        "Warfarin dosing in elderly people.",
        "The trial enrolled patients with asthma; patients in the trial used inhalers.",
    ]
    q = "Does warfarin help patients in the trial?"
    idf = MaxSimReranker(embedder).score(q, passages)
    plain = MaxSimReranker(embedder, weighting="none").score(q, passages)
    assert MAXSIM_WEIGHTING == "idf"
    assert int(np.argmax(idf)) == 1
    assert idf[1] - max(idf[0], idf[2]) > plain[1] - max(plain[0], plain[2])
    ms = MaxSimReranker(embedder)
    tv = ms.token_vectors([q, *passages])
    assert ms.score_vectors(tv[0], tv[1:]).tolist() == pytest.approx(idf.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="weighting"):
        MaxSimReranker(embedder, weighting="bm25")
    assert isinstance(tv[0], TokenVectors)


def test_maxsim_rerank_blends_with_the_first_stage(embedder) -> None:  # noqa: ANN001
    hits = _hits(PASSAGES)  # first stage prefers the wrong passages
    q = "What carries oxygen in the blood?"
    assert MaxSimReranker(embedder, alpha=1.0).rerank(q, hits)[0].chunk_id == "c1"
    assert [h.chunk_id for h in MaxSimReranker(embedder, alpha=0.0).rerank(q, hits)] == ["c0", "c1", "c2"]
    default = MaxSimReranker(embedder).rerank(q, hits)
    ms = MaxSimReranker(embedder).score(q, PASSAGES)
    expect = np.argsort(-blend(ms, np.array([h.score for h in hits]), MAXSIM_ALPHA), kind="stable")
    assert [h.chunk_id for h in default] == [f"c{i}" for i in expect]
    assert [h.score for h in default] == sorted((h.score for h in default), reverse=True)
    with pytest.raises(ValueError, match="alpha"):
        MaxSimReranker(embedder, alpha=1.5)


def test_maxsim_plugs_into_the_retriever(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    from jamba_stack.retrieval.ingest import ingest
    from jamba_stack.retrieval.search import open_retriever

    for i, t in enumerate(PASSAGES):
        (tmp_path / f"p{i}.txt").write_text(t)
    ingest(tmp_path, "rerank", data_dir=tmp_path / "data", embedder=embedder)
    r = open_retriever("rerank", data_dir=tmp_path / "data", embedder=embedder)
    r.reranker = MaxSimReranker(embedder)  # `Retriever` calls its `rerank` on the fused candidates
    q = "What carries oxygen in the blood?"
    hits = r.search(q, 3, rerank=True)
    assert hits[0].text == PASSAGES[1] and hits[0].score >= hits[1].score >= hits[2].score
    # The same order and scores as reranking the fused hits by hand (what `ask` does).
    by_hand = r.reranker.rerank(q, r.search(q, 3, rerank=False))
    assert [(h.chunk_id, h.score) for h in hits] == [(h.chunk_id, h.score) for h in by_hand]
    assert r.search(q, 1, rerank=True)[0].chunk_id == by_hand[0].chunk_id


def test_make_reranker_specs(embedder) -> None:  # noqa: ANN001
    assert make_reranker(None) is None and make_reranker("none") is None and make_reranker("") is None
    m = make_reranker("maxsim:0.25", embedder)
    assert isinstance(m, MaxSimReranker) and m.alpha == 0.25
    assert make_reranker(m) is m and supports_maxsim(embedder)
    assert m.weighting == "idf" and make_reranker("maxsim:0.5:none", embedder).weighting == "none"
    with pytest.raises(RerankerUnavailableError, match="must be a number"):
        make_reranker("maxsim:lots", embedder)
    for bad in ("maxsim:0.5:bm25", "maxsim:2"):
        with pytest.raises(RerankerUnavailableError, match="maxsim:W:idf"):
            make_reranker(bad, embedder)
    with pytest.raises(RerankerUnavailableError, match="embedder"):
        make_reranker("maxsim")


def test_cross_encoder_offline_errors_say_what_to_do(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    with pytest.raises(RerankerUnavailableError, match="local folder"):
        CrossEncoderReranker(tmp_path / "no-such-model")
    with pytest.raises(RerankerUnavailableError, match="local Hugging Face cache"):
        make_reranker("cross-encoder/not-cached-here-L-6")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(RerankerUnavailableError, match="cannot load cross-encoder"):
        CrossEncoderReranker(tmp_path / "broken")
