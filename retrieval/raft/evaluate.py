"""`raft eval`: answer the eval split with its documents (oracle + distractors, as shown in
training) and score the answers.

Scores, over rows with a gold answer: `exact_match` and `f1` (SQuAD-normalised, of the text after
`<ANSWER>:`; a reply without the tag is scored on its whole text); `citation_precision`: among
replies that quote anything, the share whose quotes all occur verbatim (whitespace normalised) in
the documents shown; `abstention_rate`: share of replies whose final answer abstains
(`quotes.ABSTAIN_ANSWER`); the same `exact_match` / `f1` separately for rows with and without the
oracle (`with_oracle`, `without_oracle`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jamba_stack.retrieval.raft.errors import RaftDataError
from jamba_stack.retrieval.raft.quotes import (
    exact_match,
    extract_quotes,
    final_answer,
    is_abstention,
    quote_in,
    token_f1,
)


def load_eval_rows(data: Path, split: str = "eval") -> list[dict[str, Any]]:
    """The chat rows of `split` from an export folder (`chat.<split>.jsonl`, else the rows of
    `chat.jsonl` with that split, else all of `chat.jsonl`). Raises `RaftDataError`."""
    path = data / f"chat.{split}.jsonl"
    if path.is_file():
        return _read(path)
    path = data / "chat.jsonl"
    if not path.is_file():
        raise RaftDataError(
            f"{data} has no chat.{split}.jsonl or chat.jsonl: pass the --out folder of `raft generate`"
        )
    rows = _read(path)
    chosen = [r for r in rows if r.get("split") == split]
    return chosen or rows


def _read(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RaftDataError(f"{path}:{n} is not JSON ({e.msg}): regenerate the export") from e
        if not isinstance(row, dict) or "messages" not in row or "documents" not in row:
            raise RaftDataError(
                f"{path}:{n} lacks messages/documents: is this a chat.jsonl of `raft generate`?"
            )
        rows.append(row)
    return rows


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 6) if xs else 0.0


def score(rows: Sequence[dict[str, Any]], replies: Sequence[str]) -> dict[str, Any]:
    """The scores of `replies` (the model's full answers) to `rows` (chat rows: answer,
    documents, oracle_present), in order. Raises `RaftDataError` when the counts differ."""
    if len(rows) != len(replies):
        raise RaftDataError(f"{len(replies)} replies for {len(rows)} rows: pass one reply per row")
    em: dict[str, list[float]] = {"all": [], "with": [], "without": []}
    f1: dict[str, list[float]] = {"all": [], "with": [], "without": []}
    cited: list[float] = []
    abstained: list[float] = []
    for row, reply in zip(rows, replies, strict=True):
        pred = final_answer(reply)
        pred = reply.strip() if pred is None else pred
        abstained.append(float(is_abstention(pred)))
        quotes = extract_quotes(reply)
        if quotes:
            texts = [d["text"] for d in row["documents"]]
            cited.append(float(all(quote_in(q, texts) for q in quotes)))
        gold = str(row.get("answer") or "")
        if not gold:
            continue
        group = "with" if row.get("oracle_present") else "without"
        e, f = exact_match(pred, gold), token_f1(pred, gold)
        for g in ("all", group):
            em[g].append(e)
            f1[g].append(f)
    return {
        "rows": len(rows),
        "scored": len(em["all"]),
        "exact_match": _mean(em["all"]),
        "f1": _mean(f1["all"]),
        "citation_precision": _mean(cited),
        "quoted": len(cited),
        "abstention_rate": _mean(abstained),
        "with_oracle": {"rows": len(em["with"]), "exact_match": _mean(em["with"]), "f1": _mean(f1["with"])},
        "without_oracle": {
            "rows": len(em["without"]),
            "exact_match": _mean(em["without"]),
            "f1": _mean(f1["without"]),
        },
    }


def answer_rows(
    model: Any, rows: Sequence[dict[str, Any]], *, max_tokens: int = 384, progress: bool = False
) -> list[str]:
    """The model's greedy reply to each row's system + user messages (a `ChatModel`)."""
    from tqdm.auto import tqdm

    out = []
    for row in tqdm(rows, desc="answering", unit="row", disable=not progress):
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]
        out.append(model.chat(prompt, max_tokens=max_tokens, temperature=0.0).content or "")
    return out


def rag_rows(rows: Sequence[dict[str, Any]], retriever: Any, k: int) -> list[dict[str, Any]]:
    """The rows with their documents replaced by the retriever's top `k` for the question (what a
    RAG deployment shows); `oracle_present` says whether the oracle chunk was retrieved."""
    from jamba_stack.retrieval.raft.prompts import student_messages

    out = []
    for row in rows:
        hits = retriever.search(row["question"], k)
        docs = [{"id": h.chunk_id, "text": h.text, "source": h.source} for h in hits]
        ids = [d["id"] for d in docs]
        oracle = row.get("oracle_id")
        present = oracle in ids
        out.append(
            row
            | {
                "documents": docs,
                "oracle_present": present,
                "oracle_index": ids.index(oracle) if present else None,
                "messages": student_messages(row["question"], docs),
            }
        )
    return out


def rag_scores(
    model: Any,
    rows: Sequence[dict[str, Any]],
    retriever: Any,
    ks: Sequence[int],
    *,
    max_tokens: int = 384,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """`{"top{k}": score(...) | {"recall": share of rows whose oracle was retrieved}}` for each k:
    the rows answered with the retriever's top k instead of their stored documents."""
    out: dict[str, dict[str, Any]] = {}
    for k in ks:
        rrows = rag_rows(rows, retriever, k)
        replies = answer_rows(model, rrows, max_tokens=max_tokens, progress=progress)
        out[f"top{k}"] = score(rrows, replies) | {
            "recall": sum(r["oracle_present"] for r in rrows) / max(len(rrows), 1)
        }
    return out


COMPARE_METRICS = ("exact_match", "f1", "citation_precision")


def compare_table(
    base: dict[str, dict[str, Any]], finetuned: dict[str, dict[str, Any]], ks: Sequence[int]
) -> list[dict[str, Any]]:
    """One row per k: `{"k", "base": {metric: value}, "finetuned": {metric: value}}` for the
    `COMPARE_METRICS`, read from two `rag_scores` results (nothing is rescored here)."""
    return [
        {
            "k": k,
            "base": {m: base[f"top{k}"][m] for m in COMPARE_METRICS},
            "finetuned": {m: finetuned[f"top{k}"][m] for m in COMPARE_METRICS},
        }
        for k in ks
    ]


def format_compare(table: Sequence[dict[str, Any]]) -> str:
    """`compare_table` as a fixed-width text table (EM, F1, citation precision per model)."""
    head = f"{'k':>3} | {'base EM':>8} {'base F1':>8} {'base cite':>9} | {'ft EM':>8} {'ft F1':>8} {'ft cite':>9}"
    lines = [head, "-" * len(head)]
    for r in table:
        b, f = r["base"], r["finetuned"]
        lines.append(
            f"{r['k']:>3} | {b['exact_match']:>8.3f} {b['f1']:>8.3f} {b['citation_precision']:>9.3f}"
            f" | {f['exact_match']:>8.3f} {f['f1']:>8.3f} {f['citation_precision']:>9.3f}"
        )
    return "\n".join(lines)


def evaluate(
    model: Any,
    data: Path,
    *,
    split: str = "eval",
    limit: int | None = None,
    max_tokens: int = 384,
    progress: bool = False,
) -> dict[str, Any]:
    """Answer the `split` rows of the export in `data` with `model` and score them (`score`)."""
    rows = load_eval_rows(data, split)[:limit]
    return score(rows, answer_rows(model, rows, max_tokens=max_tokens, progress=progress))
