"""What the teacher and the student read: the system prompt, the user prompt (question first,
then the documents, so truncating a long prompt cuts documents, never the question) and the
question-generation request (JSON mode, with a schema)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jamba_stack.retrieval.raft.quotes import ABSTAIN_ANSWER, ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, REASON_TAG

SYSTEM_PROMPT = (
    "You answer questions from the documents given with them. Some documents are irrelevant "
    "distractors; use only the ones that answer the question. Think step by step: start with "
    f"'{REASON_TAG}', copy the sentences you rely on word for word between '{BEGIN_QUOTE}' and "
    f"'{END_QUOTE}', explain, and end with '{ANSWER_TAG} ' followed by a short final answer."
)

ABSTAIN_REASON = (
    f"{REASON_TAG} None of the documents states the answer to this question, so it cannot be "
    f"answered from them. {ANSWER_TAG} {ABSTAIN_ANSWER}"
)
"""The whole chain-of-thought answer of a row without its oracle under `--no-oracle-answer abstain`."""


def user_prompt(question: str, documents: Sequence[Mapping[str, Any]]) -> str:
    """The student's (and the teacher's) user message: the question, then each document in a
    `<DOCUMENT>` block in the order shown, then the question again as a reminder."""
    docs = "\n".join(f"<DOCUMENT>{d['text']}</DOCUMENT>" for d in documents)
    return f"Question: {question}\n\nDocuments:\n{docs}\n\nAnswer the question: {question}"


def student_messages(question: str, documents: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """System and user messages, as the fine-tuned model will see them."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(question, documents)},
    ]


def question_schema(n: int, max_chars: int = 300) -> dict[str, Any]:
    """JSON Schema of the teacher's reply to `question_messages`: exactly `n` question/answer pairs."""
    qa = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 5, "maxLength": max_chars},
            "answer": {"type": "string", "minLength": 1, "maxLength": max_chars},
        },
        "required": ["question", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"questions": {"type": "array", "items": qa, "minItems": n, "maxItems": n}},
        "required": ["questions"],
        "additionalProperties": False,
    }


def question_messages(chunk_text: str, n: int) -> list[dict[str, str]]:
    """The request for `n` questions that `chunk_text` answers, each with a short answer copied from it."""
    return [
        {
            "role": "system",
            "content": "You write exam questions about a text. Answer in JSON only.",
        },
        {
            "role": "user",
            "content": (
                f"Write {n} different questions that the text below answers, each with a short answer "
                "copied from the text. Reply as JSON: "
                '{"questions": [{"question": "...", "answer": "..."}]}.\n\n'
                f"Text:\n{chunk_text}"
            ),
        },
    ]
