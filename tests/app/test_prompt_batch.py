"""Prompt texts of concurrent requests are tokenized in batches (`PromptBatcher`), each request
getting exactly what tokenizing it alone gives, or its own error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jamba_runtime import LLM, EngineConfig
from jamba_runtime.errors import ContextLengthError, InvalidRequestError
from jamba_stack.app.server.prompt_batch import PromptBatcher

MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir, engine=EngineConfig(max_model_len=MAX_MODEL_LEN, cache_memory_gb=0.02))


def texts() -> list[str]:
    return [f"Request {i}: " + "word " * (3 * i) + "é ü 漢字 <|eom|>" * (i % 3) for i in range(24)]


def test_encode_batch_and_encode_many_give_what_encode_gives(llm: LLM) -> None:
    tok, enc = llm.engine.tokenizer, llm.engine.prompt_encoder
    many = [*texts(), "x " * 600, "", "y" * 5000]  # too long in tokens, empty, too long in characters
    for add in (True, False):
        assert tok.encode_batch(many, add) == [tok.encode(t, add) for t in many]
    got = enc.encode_many(many, MAX_MODEL_LEN)
    for text, ids in zip(many, got, strict=True):
        try:
            expected: object = enc.encode(text, MAX_MODEL_LEN)
        except ContextLengthError as exc:
            assert isinstance(ids, ContextLengthError) and str(ids) == str(exc)
            continue
        assert ids == expected
    assert sum(isinstance(x, ContextLengthError) for x in got) == 2
    assert enc.encode_many(many, None, add_special_tokens=False) == [tok.encode(t, False) for t in many]


def test_concurrent_prompts_are_batched_and_each_gets_its_own_ids_or_error(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = llm.engine
    sizes: list[int] = []
    real = engine.tokenizer.encode_batch

    def spy(batch, add_special_tokens=True):  # noqa: ANN001, ANN202 - records, then the real call
        sizes.append(len(batch))
        return real(batch, add_special_tokens)

    monkeypatch.setattr(engine.tokenizer, "encode_batch", spy)
    prompts = PromptBatcher(engine)
    asks = [*texts(), "", "x " * 600]

    async def run() -> list[object]:
        calls = [prompts.prompt_ids(t) for t in asks] + [prompts.template_ids(t) for t in texts()[:4]]
        return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(run())
    for text, ids in zip(asks, got, strict=False):
        if not text:
            assert isinstance(ids, InvalidRequestError) and "empty" in str(ids)
        elif len(engine.tokenizer.encode(text)) >= MAX_MODEL_LEN:
            assert isinstance(ids, ContextLengthError)
        else:
            assert ids == engine.prompt_ids(text)
    assert got[len(asks) :] == [engine.tokenizer.encode(t, add_special_tokens=False) for t in texts()[:4]]
    assert max(sizes) > 1  # requests that arrived together shared a call
    # every text of at most max_model_len characters tokenized once in a batch (longer ones go
    # through the early length checks alone, the empty one nowhere)
    assert sum(sizes) == sum(1 for t in asks if t and len(t) <= MAX_MODEL_LEN) + 4

    async def alone() -> list[int]:
        return await prompts.prompt_ids("just one")

    sizes.clear()
    assert asyncio.run(alone()) == engine.prompt_ids("just one")
    assert sizes == [1]  # a lone request waits for nobody
