"""Prompt text is bounded before it is tokenized: a text that cannot fit `max_model_len` is refused
after tokenizing a bounded part of it (counted through a tokenizer that records every character
it is given), and the decision is exact: never a refusal of a prompt that fits, never an accepted
one that does not."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HFTokenizer

from jamba_runtime import LLM
from jamba_runtime.engine.prompt_encoder import PromptEncoder, VocabBounds
from jamba_runtime.errors import ContextLengthError, InvalidRequestError
from jamba_runtime.tokenizer.tiny import TINY_SPECIAL_TOKENS, tiny_corpus
from jamba_runtime.tokenizer.tokenizer import Tokenizer

TEN_MB = 10 * 1024 * 1024


class CountingTokenizer:
    """The real tokenizer, counting the characters handed to `encode`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.chars = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.chars += len(text)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def counting(llm: LLM) -> CountingTokenizer:
    """Route `llm`'s prompt tokenizing through a counter (the engine's own encoder, re-made on it)."""
    counter = CountingTokenizer(llm.tokenizer)
    llm.engine.prompt_encoder = PromptEncoder(counter)  # type: ignore[arg-type]
    return counter


def corpus_text(size: int) -> str:
    text = " ".join(tiny_corpus())
    return (text * (size // len(text) + 1))[:size]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir)  # the tiny model's own context: 262,144 tokens


@pytest.fixture(scope="module")
def small(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir, max_model_len=2048)


def test_a_ten_megabyte_prompt_is_refused_untokenized(llm: LLM) -> None:
    assert llm.max_model_len == 262_144
    counter = counting(llm)
    text = corpus_text(TEN_MB)
    with pytest.raises(
        ContextLengthError, match=r"prompt 0: prompt has at least [\d,]+ tokens \(10,485,760 char"
    ):
        llm.generate(text)
    with pytest.raises(ContextLengthError, match="limit 262,144"):
        llm.chat_prompt_ids([{"role": "user", "content": text}])
    assert counter.chars == 0
    assert llm.engine.metrics().waiting == 0 and not llm.engine.requests


def test_a_long_prompt_under_the_character_bound_is_refused_on_a_prefix(small: LLM) -> None:
    """40,000 characters (about 9,000 tokens) for a 2,048-token context: fewer characters than
    2,048 of the longest tokens, so the refusal rests on tokenized prefixes, a part of the text."""
    counter = counting(small)
    text = corpus_text(40_000)
    assert len(text) < small.max_model_len * small.engine.prompt_encoder.bounds.max_token_chars
    with pytest.raises(ContextLengthError, match=r"prompt has at least [\d,]+ tokens \(in its first"):
        small.engine.prompt_ids(text)
    assert 0 < counter.chars < len(text) // 2
    # About 900 tokens: tokenized whole, after one prefix of at most 2,048 characters (a text
    # longer than the limit in characters is tried on a prefix first).
    fits = corpus_text(4_000)
    counter.chars = 0
    assert small.engine.prompt_ids(fits) == small.tokenizer.encode(fits)
    assert len(fits) <= counter.chars <= len(fits) + 2048
    counter.chars = 0
    assert small.engine.prompt_ids(fits[:2048]) == small.tokenizer.encode(fits[:2048])
    assert counter.chars == 2048  # no longer than the limit: tokenized once


def test_token_ids_past_the_limit_are_refused_before_each_id_is_checked(small: LLM) -> None:
    ids: list[Any] = [5] * 5000 + ["not an id"]
    with pytest.raises(ContextLengthError, match="prompt has 5,001 tokens, limit 2,048"):
        small.engine.prompt_ids(ids)
    with pytest.raises(InvalidRequestError, match="list of integer token ids"):
        small.engine.prompt_ids(ids[-10:])


def _random_text(rng: random.Random, sentences: list[str]) -> str:
    pieces = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.6:
            pieces.append(rng.choice(sentences))
        elif kind < 0.7:
            pieces.append(rng.choice([" ", "  ", "\n", "\n\n", "\t", " \u3000", "\xa0", " \n "]))
        elif kind < 0.8:
            pieces.append(rng.choice(TINY_SPECIAL_TOKENS))
        elif kind < 0.9:
            pieces.append("".join(chr(rng.choice([rng.randrange(33, 127), rng.randrange(0x400, 0x4FF),
                                                  rng.randrange(0x4E00, 0x4FFF), rng.randrange(0x1F600, 0x1F64F)]))
                                  for _ in range(rng.randint(1, 200))))  # fmt: skip
        else:
            pieces.append(json.dumps({"k": rng.choice(sentences), "n": rng.randint(0, 9999)}, indent=2))
    return rng.choice(["", " ", "\n"]).join(pieces)


@pytest.mark.parametrize("crossing", [False, True], ids=["tiny vocab", "vocab with a token across a space"])
def test_the_bounded_decision_is_exact(tokenizer: Tokenizer, tiny_model_dir: Path, crossing: bool) -> None:
    """300 random texts (sentences, whitespace runs, special tokens, CJK and emoji, JSON, words
    glued together) against limits at, just under and just over their token count and at random:
    refused exactly when the whole text has `limit` tokens or more; otherwise the same ids as
    tokenizing it whole. With a vocab token that runs from a word into a space the prefix bound
    must not be used (it would no longer be exact), and is not."""
    if crossing:
        hf = HFTokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
        hf.add_tokens(["the "])  # a word and the space after it, as one token
        tokenizer = Tokenizer(hf, tokenizer.special_tokens, tokenizer.chat_template)
        assert tokenizer.token_to_id("the ") in tokenizer.encode("of the cat")
    encoder = PromptEncoder(tokenizer)
    assert encoder.bounds.cuts_at_whitespace is not crossing
    rng = random.Random(16 + crossing)
    sentences = tiny_corpus()
    checked = refused_early = 0
    for _ in range(300):
        text = _random_text(rng, sentences)
        n = len(tokenizer.encode(text))
        for limit in {max(2, n - 1), n, n + 1, rng.randint(2, 2 * n + 2)}:
            try:
                ids = encoder.encode(text, limit)
            except ContextLengthError as e:
                assert n >= limit, f"refused a text of {n} tokens for a limit of {limit}: {e}"
                refused_early += "at least" in str(e)
            else:
                assert n < limit and ids == tokenizer.encode(text)
            checked += 1
    assert checked > 1000 and refused_early > 100


def test_vocab_bounds_of_the_tiny_tokenizer(tokenizer: Tokenizer) -> None:
    bounds = VocabBounds.of(tokenizer)
    longest = max(len(tokenizer.decode([i], skip_special_tokens=False)) for i in range(tokenizer.vocab_size))
    assert bounds.max_token_chars >= longest and bounds.cuts_at_whitespace
