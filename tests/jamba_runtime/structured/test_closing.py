"""Closing-path rollouts do less work than they once did without choosing differently:
`TokenTable.choose` reads only part of a mask (a few words bit by bit, the head of its order) and
must pick what reading the whole vocabulary in order picks, with the same random draws; a rollout
with `stop` gives up early but never returns another path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from jamba_runtime import LLM, StructuredOutput
from jamba_runtime.structured import closing
from jamba_runtime.structured.closing import ScanState, TokenTable
from jamba_runtime.structured.matcher import ESTIMATE_CAP


def reference_choose(
    table: TokenTable, words: np.ndarray, state: ScanState | None, rng: random.Random
) -> int | None:
    """The whole vocabulary in the state's order: the first allowed end-of-sequence token, else a
    random allowed token of the first tier that holds one."""
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little")
    for e in table.eos_list:
        if allowed[e]:
            return e
    o = table._orders[closing._NEUTRAL if state is None else (state.mode, state.incomplete)]  # noqa: SLF001
    ok = allowed[o.ids]
    if not ok.any():
        return None
    first = int(ok.argmax())
    tier = o.ids[first : int(o.tier_end[first])]
    cands = tier[ok[first : int(o.tier_end[first])].astype(bool)]
    return int(cands[rng.randrange(cands.size)])


@pytest.mark.parametrize("dense_words", [1536, 4])  # 4: the tiny vocab's masks take the head path too
def test_choose_matches_the_whole_vocab_reference(
    llm: LLM, dense_words: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(closing, "_DENSE_WORDS", dense_words)
    table = llm.engine.grammars.token_table
    n_words = (table.vocab_size + 31) // 32
    gen = np.random.default_rng(0)
    states = [None, ScanState(), ScanState(0, 1, True), ScanState(1, 1, False), ScanState(2, 2, False)]
    picked = set()
    for trial in range(400):
        # from one allowed token to nearly all, eos sometimes among them
        k = int(gen.choice([0, 1, 3, 30, 300, table.vocab_size * 3 // 4]))
        ids = gen.integers(0, table.vocab_size, k)
        if trial % 5 == 0:
            ids = ids[~np.isin(ids, table.eos)]
        words = np.zeros(n_words, dtype=np.uint32)
        np.bitwise_or.at(words, ids >> 5, (np.uint32(1) << (ids & 31).astype(np.uint32)))
        for state in states:
            a, b = random.Random(trial), random.Random(trial)
            got = table.choose(words, state, a)
            assert got == reference_choose(table, words, state, b)
            assert a.getstate() == b.getstate()  # the same draws: later choices stay the same too
            picked.add(got)
    assert None in picked and len(picked) > 50  # empty masks, and many different tokens, were seen


@pytest.fixture(scope="module")
def llm(tiny_model_dir) -> LLM:  # noqa: ANN001 - the conftest's path fixture
    return LLM(model=tiny_model_dir)


SCHEMA_DIR = Path(__file__).resolve().parents[2] / "data" / "schemas"


@pytest.mark.parametrize("name", ["person", "exclusive_bounds", "many_required_fields", "format_email"])
def test_rollout_stop_gives_the_full_rollout_or_none(llm: LLM, name: str) -> None:
    """`stop` only gives up early: a path of at most `stop` tokens is the one the rollout without it
    finds, a longer one (or none) is None; and the compiler's start-state length is that rollout's."""
    grammars = llm.engine.grammars
    spec = StructuredOutput(json_schema=json.loads((SCHEMA_DIR / f"{name}.json").read_text()))
    m = grammars.matcher(spec)
    full = m._rollout(m.matcher, m._scan, ESTIMATE_CAP)  # noqa: SLF001
    assert m.compiled.start_path_len == (None if full is None else len(full))
    for stop in (1, 4, 12, 40, 120):
        got = m._rollout(m.matcher, m._scan, ESTIMATE_CAP, stop=stop)  # noqa: SLF001
        assert got == (full if full is not None and len(full) <= stop else None)


def _fresh_bitmask(llm: LLM):  # noqa: ANN202 - a (1, words) int32 tensor
    return llm.engine.grammars.allocate_bitmask(1)


def _allowed(bitmask) -> list[int]:  # noqa: ANN001
    bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
    return np.flatnonzero(bits).tolist()


@pytest.mark.parametrize("name", ["person", "many_required_fields"])
def test_a_path_that_takes_every_token_left_is_followed_at_once(llm: LLM, name: str) -> None:
    """With exactly as many tokens left as its closing path has, a sequence follows the path from
    that step on (its mask allows the path's token alone), and ends complete and valid; with more
    left, its mask is the grammar's own."""
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    grammars = llm.engine.grammars
    spec = StructuredOutput(json_schema=schema)
    start = grammars.matcher(spec)
    full = start._rollout(start.matcher, start._scan, ESTIMATE_CAP)  # noqa: SLF001
    assert full is not None
    # go along the path to a state where the grammar allows many tokens (inside a string)
    for k in range(len(full)):
        m = grammars.matcher(spec)
        assert m.rebuild(full[:k])
        own = _fresh_bitmask(llm)
        m.fill_bitmask(own, 0)
        if len(_allowed(own)) > 1:
            break
    else:
        pytest.fail("the path never passes a state with a choice")
    path = m._rollout(m.matcher, m._scan, ESTIMATE_CAP)  # noqa: SLF001
    assert path is not None
    roomy = _fresh_bitmask(llm)
    m.prepare(roomy, 0, len(path) + 8)
    assert _allowed(roomy) == _allowed(own)
    m = grammars.matcher(spec)  # from the start: its first estimate opens the window at once
    taken = []
    for remaining in range(len(full), 0, -1):
        bitmask = _fresh_bitmask(llm)
        m.prepare(bitmask, 0, remaining)
        allowed = _allowed(bitmask)
        assert len(allowed) == 1
        taken.append(m.take(allowed[0], remaining))
        assert taken[-1] == allowed[0]
    assert m.is_terminated() or taken[-1] in grammars.eos_token_ids
    body = taken[:-1] if taken[-1] in grammars.eos_token_ids else taken
    jsonschema.validate(json.loads(llm.engine.tokenizer.decode(body)), schema)


def test_a_format_string_closes_from_the_middle_of_its_text(llm: LLM) -> None:
    """Inside an email's local part with few tokens left, the rollout types the rest of an address
    (a character search: the hint does not fit) and the path completes the grammar."""
    grammars = llm.engine.grammars
    schema = json.loads((SCHEMA_DIR / "format_email.json").read_text())
    m = grammars.matcher(StructuredOutput(json_schema=schema))
    key = next(iter(schema["properties"]))
    prefix = llm.engine.tokenizer.encode(f'{{"{key}": "hello', add_special_tokens=False)
    assert all(m.accept(t) for t in prefix)
    for cap in (4, 5, 6, 8):
        path = m._rollout(m.matcher, m._scan, cap)  # noqa: SLF001
        if path is None:
            continue
        assert len(path) <= cap
        c = m.matcher.deep_copy()
        body = path[:-1] if path[-1] in grammars.eos_token_ids else path
        assert c.try_consume_tokens(body) == len(body) and (c.is_accepting() or c.is_stopped())
        text = llm.engine.tokenizer.decode(prefix + body)
        value = json.loads(text)[key]
        assert value.startswith("hello") and "@" in value
        jsonschema.validate(json.loads(text), schema)
        break
    else:
        pytest.fail("no closing path within 8 tokens")
