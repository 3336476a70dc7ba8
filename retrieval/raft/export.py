"""Exports of RAFT rows, each with a train/eval split:

- `chat.jsonl` (every row, with `split`), `chat.train.jsonl`, `chat.eval.jsonl`: question,
  documents [{id, text, source}] in shown order, oracle_present, oracle_index, cot_answer,
  messages (system/user/assistant), answer (gold).
- `prompt_completion.{train,eval}.jsonl`: TRL's conversational prompt/completion (the loss goes on
  the completion, never on the documents).
- `hf_dataset/`: a `datasets.DatasetDict` {train, eval} of the chat rows (`load_from_disk`).
- `llamafactory/`: alpaca and sharegpt files and the `dataset_info.json` that declares them.
- `gorilla/raft.{train,eval}.jsonl`: the column set of Gorilla's raft.py (id, type, question,
  context {title, sentences}, oracle_context, cot_answer, instruction).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from jamba_stack.retrieval.raft.errors import OptionalDependencyError
from jamba_stack.retrieval.raft.jsonl import dumps_line
from jamba_stack.retrieval.raft.prompts import student_messages

SPLITS = ("train", "eval")


def split_rows(
    rows: list[dict[str, Any]], eval_fraction: float, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """Rows into train and eval: `ceil(n * eval_fraction)` rows (at least one when there are two or
    more rows and the fraction is above 0, and never the last row train has) chosen by a generator
    seeded with `seed`; order kept. A split may be empty (fraction 0, one row, no rows)."""
    n = len(rows)
    n_eval = 0 if eval_fraction <= 0 else max(1 if n >= 2 else 0, math.ceil(n * eval_fraction))
    n_eval = min(n_eval, max(n - 1, 0))
    ids = sorted(r["id"] for r in rows)
    eval_ids = set(random.Random(f"split/{seed}").sample(ids, n_eval))
    return {
        "train": [r for r in rows if r["id"] not in eval_ids],
        "eval": [r for r in rows if r["id"] in eval_ids],
    }


def chat_row(row: dict[str, Any], split: str) -> dict[str, Any]:
    """A row as `chat.jsonl` holds it."""
    messages = student_messages(row["question"], row["documents"])
    return {
        "id": row["id"],
        "split": split,
        "question": row["question"],
        "answer": row["answer"],
        "documents": row["documents"],
        "oracle_present": row["oracle_present"],
        "oracle_index": row["oracle_index"],
        "oracle_id": row["oracle_id"],
        "cot_answer": row["cot_answer"],
        "messages": [*messages, {"role": "assistant", "content": row["cot_answer"]}],
    }


def _jsonl(path: Path, objs: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for o in objs:
            f.write(dumps_line(o))
    tmp.replace(path)


def _json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def prompt_completion(chat: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": chat["messages"][:2], "completion": chat["messages"][2:]}


def alpaca(chat: dict[str, Any]) -> dict[str, Any]:
    system, user, assistant = chat["messages"]
    return {
        "instruction": user["content"],
        "input": "",
        "output": assistant["content"],
        "system": system["content"],
    }


def sharegpt(chat: dict[str, Any]) -> dict[str, Any]:
    system, user, assistant = chat["messages"]
    return {
        "conversations": [
            {"from": "human", "value": user["content"]},
            {"from": "gpt", "value": assistant["content"]},
        ],
        "system": system["content"],
    }


def gorilla(row: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """Gorilla raft.py's columns. Its `context` nests one list per row: {"title": [[titles]],
    "sentences": [[texts]]}; titles are the documents' sources here (raft.py writes placeholders)."""
    return {
        "id": row["id"],
        "type": "general",
        "question": row["question"],
        "context": {
            "title": [[d["source"] for d in row["documents"]]],
            "sentences": [[d["text"] for d in row["documents"]]],
        },
        "oracle_context": row["oracle_text"],
        "cot_answer": row["cot_answer"],
        "instruction": chat["messages"][1]["content"],
    }


def dataset_info() -> dict[str, Any]:
    """LlamaFactory's `dataset_info.json` for the files `export_all` writes in `llamafactory/`."""
    info: dict[str, Any] = {}
    for split in SPLITS:
        info[f"raft_alpaca_{split}"] = {
            "file_name": f"raft_alpaca.{split}.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        }
        info[f"raft_sharegpt_{split}"] = {
            "file_name": f"raft_sharegpt.{split}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        }
    return info


def export_all(
    out: Path, rows: list[dict[str, Any]], *, eval_fraction: float = 0.1, seed: int = 0, hf: bool = True
) -> dict[str, int]:
    """Write every export of `rows` into `out`; returns the row count per split. `hf`: also save the
    `datasets` dataset (raises `OptionalDependencyError` when `datasets` is missing)."""
    splits = split_rows(rows, eval_fraction, seed)
    chats = {s: [chat_row(r, s) for r in splits[s]] for s in SPLITS}
    by_id = {r["id"]: r for r in rows}
    _jsonl(out / "chat.jsonl", [c for s in SPLITS for c in chats[s]])
    lf, gz = out / "llamafactory", out / "gorilla"
    lf.mkdir(exist_ok=True)
    gz.mkdir(exist_ok=True)
    for s in SPLITS:
        _jsonl(out / f"chat.{s}.jsonl", chats[s])
        _jsonl(out / f"prompt_completion.{s}.jsonl", [prompt_completion(c) for c in chats[s]])
        _json(lf / f"raft_alpaca.{s}.json", [alpaca(c) for c in chats[s]])
        _json(lf / f"raft_sharegpt.{s}.json", [sharegpt(c) for c in chats[s]])
        _jsonl(gz / f"raft.{s}.jsonl", [gorilla(by_id[c["id"]], c) for c in chats[s]])
    _json(lf / "dataset_info.json", dataset_info())
    if hf:
        save_hf_dataset(out / "hf_dataset", chats)
    return {s: len(chats[s]) for s in SPLITS}


def save_hf_dataset(path: Path, chats: dict[str, list[dict[str, Any]]]) -> None:
    """Save the chat rows as a `datasets.DatasetDict` of the splits (`load_from_disk(path)`);
    an empty split is saved with its columns and no rows."""
    try:
        import datasets
    except ImportError as e:
        raise OptionalDependencyError(
            "the Hugging Face dataset export needs `datasets`: pip install 'jamba-stack[train]' (or pass --no-hf)"
        ) from e
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "split": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "documents": datasets.List(
                {
                    "id": datasets.Value("string"),
                    "text": datasets.Value("string"),
                    "source": datasets.Value("string"),
                }
            ),
            "oracle_present": datasets.Value("bool"),
            "oracle_index": datasets.Value("int32"),
            "oracle_id": datasets.Value("string"),
            "cot_answer": datasets.Value("string"),
            "messages": datasets.List(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            ),
        }
    )
    # Columns, not rows: `from_list([])` finds no keys to match the features ("Keys mismatch"), and
    # an empty split (eval fraction 0, a one-row set) is a valid split.
    dd = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
            for s, rows in chats.items()
        }
    )
    # A few small shards: `datasets`' own progress bars would only be noise around ours.
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # One shard per split: `datasets` saves an empty split as zero shards, which
        # `load_from_disk` cannot read back (IndexError); a RAFT set is far below a shard's size.
        dd.save_to_disk(str(path), num_shards={s: 1 for s in dd})
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
