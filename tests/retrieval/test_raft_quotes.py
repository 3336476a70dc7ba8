"""The RAFT answer format: quote verification (a planted bad quote is rejected), the answer regex
(quotes can only be shown sentences), scoring helpers."""

from __future__ import annotations

import re

from jamba_stack.retrieval.raft.quotes import (
    ABSTAIN_ANSWER,
    closing_regex,
    contains_answer,
    cot_regex,
    exact_match,
    extract_quotes,
    final_answer,
    is_abstention,
    split_sentences,
    token_f1,
    verify_answer,
)

ORACLE = "Paris is the capital of France.  It has\nabout two million people. Its river is the Seine!"


def test_verify_accepts_verbatim_quotes_with_other_whitespace() -> None:
    ans = (
        "##Reason: ##begin_quote##It has about two million people.##end_quote## and "
        "##begin_quote##Paris is the capital of France.##end_quote## <ANSWER>: Paris"
    )
    assert extract_quotes(ans) == ["It has about two million people.", "Paris is the capital of France."]
    assert verify_answer(ans, [ORACLE]).ok
    assert final_answer(ans) == "Paris"


def test_verify_rejects_a_planted_bad_quote() -> None:
    planted = "Paris is the capital of Germany."
    ans = f"##Reason: ##begin_quote##{planted}##end_quote## <ANSWER>: Paris"
    v = verify_answer(ans, [ORACLE])
    assert not v.ok and v.reason == "quote_not_in_source" and v.quote == planted
    # a quote from a distractor is not a quote of the oracle
    assert not verify_answer(
        "##begin_quote##Berlin is big.##end_quote## <ANSWER>: x", [ORACLE], min_quotes=1
    ).ok
    assert verify_answer("no tag here", [ORACLE]).reason == "no_answer_tag"
    assert verify_answer("##Reason: none <ANSWER>: x", [ORACLE]).reason == "no_quote"
    assert verify_answer("##Reason: none <ANSWER>:   ", [ORACLE], min_quotes=0).reason == "empty_answer"


def test_sentences_are_substrings_and_the_regex_admits_only_them() -> None:
    sents = split_sentences(ORACLE + "\n# Heading (x+y)* [a] {b} $c ^d | e \\ f")
    assert all(s in ORACLE + "\n# Heading (x+y)* [a] {b} $c ^d | e \\ f" for s in sents)
    assert "# Heading (x+y)* [a] {b} $c ^d | e \\ f" in sents
    rx = re.compile(cot_regex(sents, min_quotes=1))
    good = f"##Reason: see ##begin_quote##{sents[-1]}##end_quote## so. <ANSWER>: Paris"
    assert rx.fullmatch(good)
    assert not rx.fullmatch("##Reason: see ##begin_quote##Paris is nice.##end_quote## <ANSWER>: Paris")
    assert not rx.fullmatch("##Reason: no quote <ANSWER>: Paris")  # at least one quote
    assert not rx.fullmatch(f"##Reason: ##begin_quote##{sents[0]}##end_quote## <ANSWER>:  ")
    assert re.fullmatch(cot_regex(sents, min_quotes=0), "##Reason: none <ANSWER>: x")
    fixed = re.compile(cot_regex([], answer=ABSTAIN_ANSWER))
    assert fixed.fullmatch(f"##Reason: nothing. <ANSWER>: {ABSTAIN_ANSWER}")
    assert not fixed.fullmatch("##Reason: nothing. <ANSWER>: Paris")


def test_scores_and_answer_filter() -> None:
    assert exact_match("The Seine!", "seine") == 1.0
    assert token_f1("the river Seine", "Seine") == 2 * (1 / 2) * 1 / (1 / 2 + 1)
    assert token_f1("Loire", "Seine") == 0.0
    assert is_abstention(ABSTAIN_ANSWER) and not is_abstention("Paris")
    assert contains_answer(ORACLE, "the  Seine") and not contains_answer(ORACLE, "Sein")
    assert not contains_answer("no, yes", "yes")  # generic answers never filter distractors


def test_closing_regex_finishes_cut_answers_verbatim() -> None:
    sents = split_sentences(ORACLE)
    first = sents[0]  # "Paris is the capital of France."
    full = re.compile(cot_regex(sents, min_quotes=1))
    cases = [  # (answer cut off, a finish the closing grammar allows, one it refuses)
        ("##Reason: some text", f" ##begin_quote##{first}##end_quote## <ANSWER>: x", " <ANSWER>: x"),
        (
            "##Reason: text ##begin_qu",
            f"ote##{first}##end_quote## <ANSWER>: x",
            "ote##Paris.##end_quote## <ANSWER>: x",
        ),
        (
            "##Reason: ##begin_quote##Paris is the cap",
            "ital of France.##end_quote## <ANSWER>: x",
            "ital.##end_quote## <ANSWER>: x",
        ),
        (f"##Reason: ##begin_quote##{first}##end_quote## and then", " <ANSWER>: x", " more <ANSWER>: x"),
        (f"##Reason: ##begin_quote##{first}##end_quote## <ANS", "WER>: x", "WER>:  "),
        (f"##Reason: ##begin_quote##{first}##end_quote## <ANSWER>: ", "Paris", " "),
    ]
    for partial, good, bad in cases:
        rx = closing_regex(partial, sents, min_quotes=1)
        assert rx is not None, partial
        assert re.fullmatch(rx, good) and not re.fullmatch(rx, bad), (partial, rx)
        done = partial + good
        assert full.fullmatch(done) and verify_answer(done, [ORACLE]).ok, done
    assert closing_regex("##Reason: x <ANSWER>: Paris", sents) is None  # already whole
    assert closing_regex("##Reason: ##begin_quote##Berlin", sents) is None  # no shown sentence fits
