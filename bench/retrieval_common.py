"""What the retrieval benches share: BEIR data loading, percentiles, metrics cross-checked
against pytrec_eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jamba_stack.retrieval.metrics import evaluate, pytrec_evaluate


def load_beir(d: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
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


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def checked(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    ours = evaluate(run, qrels)
    ref = pytrec_evaluate(run, qrels)
    if ref is not None:
        diff = max(abs(ours[m] - ref[m]) for m in ours)
        assert diff < 1e-9, f"metrics disagree with pytrec_eval by {diff}"
        ours["pytrec_eval_max_abs_diff"] = diff
    return ours
