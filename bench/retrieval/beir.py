"""BEIR data for the retrieval benches: SciFact's folder, a split's queries and relevance
judgements, and metrics of a run cross-checked against pytrec_eval."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common.paths import SHARED_DATA
from jamba_stack.retrieval.metrics import evaluate, pytrec_evaluate

SCIFACT = SHARED_DATA / "scifact"


def corpus_rows(corpus: Path, limit: int, work: Path) -> tuple[Path, list[dict]]:
    """A BEIR `corpus.jsonl`'s rows and the file to ingest: `corpus` itself, or with `limit`
    (> 0) its first `limit` rows written to `work`/corpus.jsonl."""
    rows = [json.loads(x) for x in corpus.read_text().splitlines() if x.strip()]
    if limit:
        rows = rows[:limit]
        corpus = work / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return corpus, rows


def load_beir(d: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """(queries by id, relevance by query id then doc id) of `split` in the BEIR folder `d`; only
    queries that have judgements."""
    qrels: dict[str, dict[str, int]] = {}
    for line in (d / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, doc, s = line.split("\t")
        qrels.setdefault(q, {})[doc] = int(s)
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, (d / "queries.jsonl").read_text().splitlines())
        if q["_id"] in qrels
    }
    return queries, qrels


def checked(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Our metrics of `run` (ranked doc ids per query); raises AssertionError where pytrec_eval,
    when installed, disagrees by 1e-9 or more."""
    ours = evaluate(run, qrels)
    ref = pytrec_evaluate(run, qrels)
    if ref is not None:
        diff = max(abs(ours[m] - ref[m]) for m in ours)
        assert diff < 1e-9, f"metrics disagree with pytrec_eval by {diff}"
        ours["pytrec_eval_max_abs_diff"] = diff
    return ours
