"""`EngineArgs`: every argument of a load in one object, and the front doors that take it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from jamba_runtime import LLM, AsyncLLM, EngineArgs, EngineConfig, InvalidRequestError, SamplingParams

ENGINE = EngineConfig(max_num_seqs=4, cache_memory_gb=0.02)


def test_engine_args_defaults_and_checks() -> None:
    args = EngineArgs("some/model")
    assert args.engine == EngineConfig() and args.device == "cpu" and args.tensor_parallel_size == 1
    assert EngineArgs("m", engine=None).engine == EngineConfig()  # `LLM(..., engine=None)` as before
    with pytest.raises(InvalidRequestError, match="tensor_parallel_size"):
        EngineArgs("m", tensor_parallel_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.dtype = "bfloat16"  # type: ignore[misc]


def test_max_model_len_goes_into_the_engine_config() -> None:
    assert EngineArgs("m", engine=ENGINE).engine_config() is ENGINE
    merged = EngineArgs("m", max_model_len=64, engine=ENGINE).engine_config()
    assert merged == dataclasses.replace(ENGINE, max_model_len=64)


def test_llm_keywords_and_from_args_load_the_same(tiny_model_dir: Path) -> None:
    args = EngineArgs(tiny_model_dir, max_model_len=64, engine=ENGINE)
    by_args = LLM.from_args(args)
    by_keywords = LLM(tiny_model_dir, max_model_len=64, engine=ENGINE)
    assert by_args.args == by_keywords.args == args
    assert by_args.max_model_len == by_keywords.max_model_len == 64
    params = SamplingParams(max_tokens=8, temperature=0)
    assert (
        by_args.generate("Hello", params)[0].token_ids == by_keywords.generate("Hello", params)[0].token_ids
    )
    with pytest.raises(TypeError, match="max_len"):
        LLM(tiny_model_dir, max_len=64)


def test_async_llm_forwards_to_llm(tiny_model_dir: Path) -> None:
    async def run(llm: AsyncLLM) -> str:
        async with llm:
            return (await llm.generate("Hello", SamplingParams(max_tokens=4, temperature=0))).text

    for llm in (
        AsyncLLM(tiny_model_dir, max_model_len=64, engine=ENGINE),
        AsyncLLM.from_args(EngineArgs(tiny_model_dir, max_model_len=64, engine=ENGINE)),
    ):
        assert llm.max_model_len == 64 and llm.llm.args.engine is ENGINE
        asyncio.run(run(llm))
        assert llm.stopped
