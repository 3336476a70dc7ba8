"""`generate`: corpus -> chunks -> questions -> document sets -> chain-of-thought answers -> rows.

Resumable: questions are saved per chunk (`questions.jsonl`) and rows in batches (`rows.jsonl`),
each batch followed by `checkpoint.json` (the settings' fingerprint, the question ids finished,
the counters). A rerun with the same settings continues where the last one stopped; with other
settings it refuses (`CheckpointMismatchError`) unless `overwrite`. Every random choice of a row
comes from a generator seeded by (`seed`, question id), and every teacher call gets a seed made
the same way, so a resumed run writes what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from jamba_stack.retrieval.raft.corpus import (
    QA,
    CorpusChunk,
    choose_documents,
    dedup,
    hard_candidates,
    qa_id,
    read_questions_file,
)
from jamba_stack.retrieval.raft.errors import CheckpointMismatchError, RaftError
from jamba_stack.retrieval.raft.jsonl import dumps_line, split_lines
from jamba_stack.retrieval.raft.prompts import (
    ABSTAIN_REASON,
    question_messages,
    question_schema,
    student_messages,
)
from jamba_stack.retrieval.raft.quotes import (
    cot_regex,
    extract_quotes,
    final_answer,
    split_sentences,
    verify_answer,
)
from jamba_stack.retrieval.raft.teacher import AnswerRequest, Teacher
from jamba_stack.retrieval.search import Retriever

NoOracleAnswer = Literal["memory", "abstain"]


@dataclass(frozen=True)
class RaftConfig:
    """Settings of one generation run (all but `checkpoint_every` and `progress` are part of the
    fingerprint a resumed run must match).

    questions_per_chunk: questions the teacher writes per chunk. distractors: distractor documents
    per row (k). p: probability that a row shows its oracle. hard_ratio: share of distractors that
    are the retriever's hard negatives (the rest random). not_same_source: no distractor from the
    oracle's document. no_oracle_answer: what a row without its oracle answers, "memory" (the paper:
    the teacher answers anyway, quoting only what is shown) or "abstain" (a fixed answer saying
    the documents do not contain it). retries: regenerations of a row whose answer fails
    verification before it is dropped. max_tokens: the answer's budget; question_max_tokens: the
    question request's. grammar: constrain an in-process teacher's quotes to shown sentences.
    """

    questions_per_chunk: int = 3
    distractors: int = 4
    p: float = 0.8
    hard_ratio: float = 0.5
    not_same_source: bool = False
    no_oracle_answer: NoOracleAnswer = "memory"
    seed: int = 0
    retries: int = 2
    max_tokens: int = 384
    question_max_tokens: int = 384
    temperature: float = 0.7
    grammar: bool = True
    max_chunks: int | None = None
    checkpoint_every: int = 16
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise RaftError(f"p={self.p} is invalid: it is a probability, use 0..1 (RAFT's default is 0.8)")
        if not 0.0 <= self.hard_ratio <= 1.0:
            raise RaftError(f"hard_ratio={self.hard_ratio} is invalid: use 0..1")
        if self.distractors < 0 or self.questions_per_chunk < 1:
            raise RaftError(
                f"distractors={self.distractors}, questions_per_chunk={self.questions_per_chunk}: "
                "use distractors >= 0 and questions_per_chunk >= 1"
            )
        if self.no_oracle_answer not in ("memory", "abstain"):
            raise RaftError(f"no_oracle_answer={self.no_oracle_answer!r}: use memory or abstain")
        if self.checkpoint_every < 1 or self.retries < 0:
            raise RaftError("checkpoint_every must be >= 1 and retries >= 0")

    def fingerprint(self, extra: str) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "progress")}
        return hashlib.sha256((json.dumps(d, sort_keys=True) + extra).encode()).hexdigest()[:16]


@dataclass
class Summary:
    """What a run made. `p_realised` = oracle rows / rows; `distractor_sources` counts the
    distractors of kept rows by origin ("hard", "random"); `dropped` counts rows dropped by the
    reason their last answer failed; `regenerated` counts rows kept after more than one try."""

    chunks: int = 0
    questions_generated: int = 0
    questions_from_file: int = 0
    questions_unmatched: int = 0
    question_requests_failed: int = 0
    duplicates_removed: int = 0
    rows: int = 0
    oracle_rows: int = 0
    p_target: float = 0.0
    p_realised: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)
    regenerated: int = 0
    distractor_sources: dict[str, int] = field(default_factory=dict)
    teacher: str = ""
    grammar_constrained: bool = False
    no_oracle_answer: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        dropped = sum(self.dropped.values())
        return (
            f"rows: {self.rows} ({self.oracle_rows} with oracle, P realised {self.p_realised:.3f}, target "
            f"{self.p_target}); dropped {dropped} {dict(self.dropped)}; regenerated {self.regenerated}\n"
            f"questions: {self.questions_generated} generated, {self.questions_from_file} from file "
            f"({self.questions_unmatched} unmatched), {self.duplicates_removed} duplicates removed, "
            f"{self.question_requests_failed} failed requests; {self.chunks} chunks\n"
            f"distractors: {dict(self.distractor_sources)}; teacher {self.teacher} "
            f"(grammar {'on' if self.grammar_constrained else 'off'}); {self.seconds:.1f} s"
        )


def _seed(seed: int, *parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join([str(seed), *parts]).encode()).digest()[:4], "big") >> 1


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _append_jsonl(path: Path, objs: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for o in objs:
            f.write(dumps_line(o))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in split_lines(path.read_text(encoding="utf-8")):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: it and anything after it are redone
    return out


Progress = Callable[[str, int, int], None]
"""`progress(phase, done, total)` after each batch: phase "questions" counts chunks asked,
"rows" counts questions answered (kept or dropped)."""


def generate_questions(
    chunks: list[CorpusChunk],
    teacher: Teacher,
    cfg: RaftConfig,
    out: Path,
    summary: Summary,
    on_progress: Progress | None = None,
) -> list[QA]:
    """The teacher's questions for each chunk, batch by batch, saved per chunk in
    `out/questions.jsonl` (a rerun asks only for the chunks not there)."""
    from tqdm.auto import tqdm

    path = out / "questions.jsonl"
    done = {r["chunk_id"]: r for r in _read_jsonl(path)}
    _write_atomic(path, "".join(dumps_line(r) for r in done.values()))
    todo = [c for c in chunks if c.id not in done]
    schema = question_schema(cfg.questions_per_chunk)
    with tqdm(
        total=len(chunks),
        initial=len(chunks) - len(todo),
        desc="questions",
        unit="chunk",
        disable=not cfg.progress,
    ) as bar:
        for s in range(0, len(todo), cfg.checkpoint_every):
            part = todo[s : s + cfg.checkpoint_every]
            replies = teacher.questions(
                [question_messages(c.text, cfg.questions_per_chunk) for c in part],
                schema,
                [_seed(cfg.seed, "q", c.id) for c in part],
                cfg.question_max_tokens,
            )
            recs = [
                {"chunk_id": c.id, "questions": r, "failed": r is None}
                for c, r in zip(part, replies, strict=True)
            ]
            _append_jsonl(path, recs)
            done.update({r["chunk_id"]: r for r in recs})
            bar.update(len(part))
            if on_progress is not None:
                on_progress("questions", bar.n, len(chunks))
    out_qs: list[QA] = []
    for c in chunks:
        rec = done[c.id]
        if rec["failed"]:
            summary.question_requests_failed += 1
            continue
        for q in rec["questions"] or []:
            if q["question"].strip():
                out_qs.append(
                    QA(qa_id(q["question"], c.id), q["question"].strip(), q["answer"], c.id, "teacher")
                )
    summary.questions_generated = len(out_qs)
    return out_qs


def _quotable(sentences: list[str], teacher: Teacher, budget: int) -> list[str]:
    """The sentences a constrained answer may quote: those short enough that quoting one still
    leaves room to finish within the answer's budget (else the shortest one), so a grammar-bound
    answer is never cut off before its `<ANSWER>:`."""
    if not teacher.grammar or not sentences:
        return sentences
    lens = [teacher.token_len(s) or 0 for s in sentences]
    fit = [s for s, n in zip(sentences, lens, strict=True) if n <= budget // 2 - 16]
    return fit or [sentences[lens.index(min(lens))]]


def _answer_request(qa: QA, ds: Any, cfg: RaftConfig, attempt: int, teacher: Teacher) -> AnswerRequest:
    docs = [c.as_document() for c in ds.documents]
    if ds.oracle_present:
        shown = split_sentences(ds.documents[ds.oracle_index].text)
        min_quotes = 1
    else:
        shown = [s for c in ds.documents for s in split_sentences(c.text)]
        min_quotes = 0
    sents = _quotable(shown, teacher, cfg.max_tokens)
    return AnswerRequest(
        student_messages(qa.question, docs),
        cot_regex(sents, min_quotes=min_quotes),
        _seed(cfg.seed, "a", qa.qid, str(attempt)),
        tuple(sents),
        min_quotes,
    )


def _row(qa: QA, ds: Any, oracle: CorpusChunk, cot: str, attempts: int) -> dict[str, Any]:
    docs = [c.as_document() for c in ds.documents]
    return {
        "id": qa.qid,
        "question": qa.question,
        "answer": qa.answer,
        "question_origin": qa.origin,
        "documents": docs,
        "document_kinds": ds.kinds,
        "oracle_present": ds.oracle_present,
        "oracle_index": ds.oracle_index,
        "oracle_id": oracle.id,
        "oracle_text": oracle.text,
        "oracle_source": oracle.shown_source or oracle.source,
        "cot_answer": cot,
        "final_answer": final_answer(cot) or "",
        "quotes": extract_quotes(cot),
        "attempts": attempts,
    }


def generate(
    chunks: list[CorpusChunk],
    retriever: Retriever | None,
    teacher: Teacher,
    out: Path,
    cfg: RaftConfig,
    *,
    questions_file: Path | None = None,
    overwrite: bool = False,
    fingerprint_extra: str = "",
    on_progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], Summary]:
    """Make RAFT rows from `chunks` into `out/rows.jsonl` and return (all rows, summary).

    `retriever`: the hybrid retriever over `chunks` (hard negatives); None draws only random
    distractors. `questions_file`: read questions instead of asking the teacher. `on_progress`:
    called after each batch (`Progress`); `cfg.progress` draws tqdm bars besides. Raises
    `CheckpointMismatchError` when `out` holds a run with other settings (pass `overwrite`),
    `QuestionsFileError`."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    pool = chunks  # distractors come from the whole corpus, questions from the first max_chunks
    if cfg.max_chunks is not None:
        chunks = chunks[: cfg.max_chunks]
    fp = cfg.fingerprint(f"{fingerprint_extra}\x00{questions_file}\x00{len(chunks)}\x00{teacher.name}")
    ckpt_path, rows_path = out / "checkpoint.json", out / "rows.jsonl"
    ckpt: dict[str, Any] = json.loads(ckpt_path.read_text()) if ckpt_path.exists() else {}
    if ckpt and ckpt.get("fingerprint") != fp:
        if not overwrite:
            raise CheckpointMismatchError(
                f"{out} holds a run made with other settings (fingerprint {ckpt.get('fingerprint')}, now {fp}): "
                "pass --overwrite to start over, or another --out"
            )
        ckpt = {}
    if not ckpt:
        for name in ("checkpoint.json", "rows.jsonl", "questions.jsonl"):
            (out / name).unlink(missing_ok=True)
    summary = Summary(
        chunks=len(chunks),
        p_target=cfg.p,
        teacher=teacher.name,
        grammar_constrained=teacher.grammar,
        no_oracle_answer=cfg.no_oracle_answer,
    )
    if questions_file is not None:
        qas, summary.questions_unmatched = read_questions_file(questions_file, pool)
        summary.questions_from_file = len(qas)
    else:
        qas = generate_questions(chunks, teacher, cfg, out, summary, on_progress)
    qas, summary.duplicates_removed = dedup(qas)
    by_id = {c.id: c for c in pool}
    finished: set[str] = set(ckpt.get("finished", []))
    dropped: Counter[str] = Counter(ckpt.get("dropped", {}))
    regenerated = int(ckpt.get("regenerated", 0))
    rows = [r for r in _read_jsonl(rows_path) if r["id"] in finished]
    _write_atomic(rows_path, "".join(dumps_line(r) for r in rows))
    todo = [q for q in qas if q.qid not in finished]
    n_hard = 4 * (cfg.distractors + 1) + 1
    with tqdm(
        total=len(qas), initial=len(qas) - len(todo), desc="rows", unit="row", disable=not cfg.progress
    ) as bar:
        for s in range(0, len(todo), cfg.checkpoint_every):
            part = todo[s : s + cfg.checkpoint_every]
            hard = (
                hard_candidates(retriever, [q.question for q in part], n_hard)
                if retriever
                else [[] for _ in part]
            )
            sets = [
                choose_documents(
                    qa, by_id[qa.chunk_id], h, pool, by_id,
                    distractors=cfg.distractors, p=cfg.p, hard_ratio=cfg.hard_ratio,
                    not_same_source=cfg.not_same_source, rng=random.Random(f"{cfg.seed}/{qa.qid}"),
                )
                for qa, h in zip(part, hard, strict=True)
            ]  # fmt: skip
            new_rows = _answer_batch(part, sets, by_id, teacher, cfg, dropped)
            regenerated += sum(1 for r in new_rows if r["attempts"] > 1)
            rows += new_rows
            _append_jsonl(rows_path, new_rows)
            finished.update(q.qid for q in part)
            state = {
                "fingerprint": fp,
                "finished": sorted(finished),
                "dropped": dict(dropped),
                "regenerated": regenerated,
            }
            _write_atomic(ckpt_path, json.dumps(state))
            bar.update(len(part))
            if on_progress is not None:
                on_progress("rows", bar.n, len(qas))
    summary.rows = len(rows)
    summary.oracle_rows = sum(1 for r in rows if r["oracle_present"])
    summary.p_realised = summary.oracle_rows / len(rows) if rows else 0.0
    summary.dropped = dict(sorted(dropped.items()))
    summary.regenerated = regenerated
    summary.distractor_sources = dict(Counter(k for r in rows for k in r["document_kinds"] if k != "oracle"))
    summary.seconds = round(time.perf_counter() - t0, 2)
    return rows, summary


def _answer_batch(
    qas: list[QA],
    sets: list[Any],
    by_id: dict[str, CorpusChunk],
    teacher: Teacher,
    cfg: RaftConfig,
    dropped: Counter[str],
) -> list[dict[str, Any]]:
    """Answer each planned row, retrying the ones whose answer fails verification; rows that still
    fail are dropped and counted under their last failure's reason."""
    answers: dict[int, tuple[str, int]] = {}
    last_reason: dict[int, str] = {}
    pending = []
    for i, ds in enumerate(sets):
        if not ds.oracle_present and cfg.no_oracle_answer == "abstain":
            answers[i] = (ABSTAIN_REASON, 1)
        else:
            pending.append(i)
    for attempt in range(cfg.retries + 1):
        if not pending:
            break
        texts = teacher.answers(
            [_answer_request(qas[i], sets[i], cfg, attempt, teacher) for i in pending], cfg.max_tokens
        )
        still = []
        for i, text in zip(pending, texts, strict=True):
            ds = sets[i]
            if text is None:
                last_reason[i] = "teacher_error"
                still.append(i)
                continue
            if ds.oracle_present:
                verdict = verify_answer(text, [ds.documents[ds.oracle_index].text], min_quotes=1)
            else:  # no oracle to quote: quotes must come from what was shown
                verdict = verify_answer(text, [c.text for c in ds.documents], min_quotes=0)
            if verdict.ok:
                answers[i] = (text, attempt + 1)
            else:
                last_reason[i] = verdict.reason
                still.append(i)
        pending = still
    for i in pending:
        dropped[last_reason[i]] += 1
    return [
        _row(qas[i], sets[i], by_id[qas[i].chunk_id], *answers[i]) for i in range(len(qas)) if i in answers
    ]
