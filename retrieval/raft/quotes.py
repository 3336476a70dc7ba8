"""The RAFT answer format: parsing, quote verification, answer scoring helpers and the grammar that
makes a local teacher's quotes verbatim by construction.

An answer is chain-of-thought text that quotes documents between `##begin_quote##` and
`##end_quote##` and ends with `<ANSWER>: ` and the final answer (Gorilla's raft.py format):

    ##Reason: The document says ##begin_quote##Paris is the capital of France.##end_quote## so the
    capital is Paris. <ANSWER>: Paris
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
ANSWER_TAG = "<ANSWER>:"
REASON_TAG = "##Reason:"
ABSTAIN_ANSWER = "The documents do not contain the answer."
"""The final answer of an abstaining row (`--no-oracle-answer abstain`)."""

_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
_WS = re.compile(r"\s+")
# A sentence ends at . ! or ? followed by whitespace, at a blank line, or before a line that starts a
# heading or list item; other line breaks are soft wraps inside a sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:#|[-*+] |\d+[.)] ))")
_REGEX_META = set("\\.+*?()|[]{}^$")
# Free reasoning text cannot contain '#' or '<', so quote markers and the answer tag can only
# appear where the grammar puts them.
_FREE = "[^#<]*"
_ANSWER = r"[^\s#<][^#<\n]*"


def normalize_ws(text: str) -> str:
    """Runs of whitespace as one space, ends stripped (what quote verification compares)."""
    return _WS.sub(" ", text).strip()


def extract_quotes(answer: str) -> list[str]:
    """The text of every `##begin_quote##...##end_quote##` span, in order."""
    return [m.group(1) for m in _QUOTE.finditer(answer)]


def final_answer(answer: str) -> str | None:
    """The text after the last `<ANSWER>:` (stripped), or None when the tag is missing."""
    pos = answer.rfind(ANSWER_TAG)
    if pos < 0:
        return None
    return answer[pos + len(ANSWER_TAG) :].strip()


def quote_in(quote: str, texts: Iterable[str]) -> bool:
    """Whether `quote` occurs verbatim in one of `texts`, whitespace normalised on both sides."""
    q = normalize_ws(quote)
    return bool(q) and any(q in normalize_ws(t) for t in texts)


@dataclass(frozen=True)
class Verdict:
    """Result of `verify_answer`: `ok`, or the `reason` it failed ("no_answer_tag", "no_quote",
    "quote_not_in_source", "empty_answer") and the offending quote when there is one."""

    ok: bool
    reason: str = ""
    quote: str = ""


def verify_answer(answer: str, sources: Sequence[str], *, min_quotes: int = 1) -> Verdict:
    """Check a chain-of-thought answer: it has a non-empty `<ANSWER>:`, at least `min_quotes`
    quotes, and every quote occurs verbatim (whitespace normalised) in one of `sources` (the oracle
    for rows that show it)."""
    final = final_answer(answer)
    if final is None:
        return Verdict(False, "no_answer_tag")
    if not final:
        return Verdict(False, "empty_answer")
    quotes = extract_quotes(answer)
    if len(quotes) < min_quotes:
        return Verdict(False, "no_quote")
    for q in quotes:
        if not quote_in(q, sources):
            return Verdict(False, "quote_not_in_source", q)
    return Verdict(True)


def split_sentences(text: str, *, min_chars: int = 3) -> list[str]:
    """The sentences of `text`, each an exact substring of it (so a quote of one is verbatim);
    duplicates and pieces shorter than `min_chars` are left out."""
    out: list[str] = []
    seen: set[str] = set()
    for piece in _SENTENCE_END.split(text):
        s = piece.strip()
        if len(s) >= min_chars and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def regex_escape(text: str) -> str:
    """`text` as a literal in Rust `regex` syntax (what `StructuredOutput.regex` takes)."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def cot_regex(quotable: Sequence[str], *, min_quotes: int = 1, answer: str | None = None) -> str:
    """A regex for a chain-of-thought answer whose quotes can only be one of `quotable` (sentences of
    the documents shown): `##Reason: text (##begin_quote##S##end_quote## text)* <ANSWER>: answer`,
    with at least `min_quotes` quotes (0 or 1). `answer`: a fixed final answer (abstaining rows);
    None lets the model write one line. With no `quotable` sentences, no quotes are possible."""
    tail = regex_escape(answer) if answer is not None else _ANSWER
    end = f"{regex_escape(ANSWER_TAG)} {tail}"
    if not quotable:
        return f"{regex_escape(REASON_TAG)} {_FREE}{end}"
    alt = "(" + "|".join(regex_escape(s) for s in quotable) + ")"
    quote = f"{BEGIN_QUOTE}{alt}{END_QUOTE}{_FREE}"
    quotes = f"{quote}({quote})*" if min_quotes >= 1 else f"({quote})*"
    return f"{regex_escape(REASON_TAG)} {_FREE}{quotes}{end}"


# ---- scoring (SQuAD's normalisation) ----------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces: SQuAD's rule."""
    text = "".join(c for c in text.lower() if c not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 of normalised answers (1.0 when both are empty)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def is_abstention(prediction: str) -> bool:
    """Whether a final answer abstains: it is (or starts with) `ABSTAIN_ANSWER`, normalised."""
    p, a = normalize_answer(prediction), normalize_answer(ABSTAIN_ANSWER)
    return bool(p) and p.startswith(a)


def normalize_question(text: str) -> str:
    """The key questions are deduplicated by: lower case, punctuation and extra spaces removed."""
    return " ".join("".join(c for c in text.lower() if c not in _PUNCT).split())


def contains_answer(text: str, answer: str) -> bool:
    """Whether `text` contains `answer` as whole words (case and whitespace insensitive). Answers
    too short or too generic to mean anything (under 2 characters, yes/no/maybe/true/false) never
    match, so they do not empty the distractor pool."""
    a = normalize_ws(answer).lower().strip(" .")
    if len(a) < 2 or a in {"yes", "no", "maybe", "true", "false"}:
        return False
    return re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", normalize_ws(text).lower()) is not None


def closing_regex(
    partial: str, quotable: Sequence[str], *, min_quotes: int = 1, answer_chars: int = 40
) -> str | None:
    """A regex for the shortest way to finish `partial`, an answer cut off inside the `cot_regex`
    language: close the quote under way with one of the `quotable` sentences it can still become,
    add a quote if one is required and none was made, then `<ANSWER>: ` and a short answer (at most
    `answer_chars`). Returns None when `partial` is already whole or is not a prefix this format
    can finish (then it is left to verification)."""
    answer = rf"[^\s#<][^#<\n]{{0,{answer_chars - 1}}}"
    tag = ANSWER_TAG + " "
    pos = partial.rfind(ANSWER_TAG)
    if pos >= 0:  # in the final answer: whole once it has one character
        rest = partial[pos:]
        if rest.startswith(tag) and rest[len(tag) :].strip():
            return None
        if rest == ANSWER_TAG:
            return " " + answer
        return answer if rest == tag else None
    alt = "(" + "|".join(regex_escape(s) for s in quotable) + ")" if quotable else None
    n_quotes = partial.count(END_QUOTE)
    if partial.count(BEGIN_QUOTE) > n_quotes:  # inside a quote: finish it as one of the sentences
        quoted = partial[partial.rfind(BEGIN_QUOTE) + len(BEGIN_QUOTE) :]
        rems = sorted(
            {(s + END_QUOTE)[len(quoted) :] for s in quotable if (s + END_QUOTE).startswith(quoted)}
        )
        rems = [r for r in rems if r]
        if not rems:
            return None
        return "(" + "|".join(regex_escape(r) for r in rems) + ")" + regex_escape(" " + tag) + answer
    need_quote = n_quotes < min_quotes
    for k in range(len(BEGIN_QUOTE) - 1, 0, -1):  # a quote marker cut in half
        if partial.endswith(BEGIN_QUOTE[:k]) and not partial.endswith(END_QUOTE) and alt is not None:
            return regex_escape(BEGIN_QUOTE[k:]) + alt + regex_escape(END_QUOTE + " " + tag) + answer
    for k in range(len(tag) - 1, 0, -1):  # the answer tag cut in half
        if partial.endswith(tag[:k]) and not need_quote:
            return regex_escape(tag[k:]) + answer
    if need_quote:
        if alt is None:
            return None
        return regex_escape(" " + BEGIN_QUOTE) + alt + regex_escape(END_QUOTE + " " + tag) + answer
    return regex_escape(" " + tag) + answer
