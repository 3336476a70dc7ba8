"""The engine on 2 tensor-parallel ranks (`LLM(..., tensor_parallel_size=2)`): rank 0 here, rank 1
a spawned gloo process on CPU. Its outputs equal the single-process engine's, through chunked
prefill, continuous batching and a restored prefix snapshot (whose slot and block copies rank 1
must mirror)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist

from jamba_runtime import LLM, SamplingParams
from jamba_runtime.engine import EngineConfig
from jamba_runtime.errors import InvalidRequestError

# Blocks of 4 tokens and a budget of 8 tokens a step: prompts prefill in chunks beside decodes.
ENGINE = EngineConfig(max_num_seqs=3, max_num_batched_tokens=8, block_size=4, cache_memory_gb=0.01)
PROMPTS = [[1, *range(40, 59)], [1, 7, 300, 12], [1, *range(500, 511)], [1, 9, 9, 9, 81]]
PREFIX = [1, 9, 88, 301, 14, 15, 16]  # ends inside a block: the restore copies it on write
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def _outputs(llm: LLM) -> list[list[int]]:
    outs = [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]
    llm.save_prefix(PREFIX, key="tp-prefix")
    restored = llm.generate([[*PREFIX, 500, 501], [*PREFIX, 7]], GREEDY, prefix_snapshot="tp-prefix")
    return [*outs, *(o.token_ids for o in restored)]


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path) -> list[list[int]]:
    return _outputs(LLM(model=tiny_model_dir, engine=ENGINE))


@pytest.fixture(scope="module")
def tp_llm(tiny_model_dir: Path) -> Iterator[LLM]:
    llm = LLM(model=tiny_model_dir, engine=ENGINE, tensor_parallel_size=2)
    try:
        yield llm
    finally:
        llm.close()


def test_two_ranks_generate_what_one_process_does(tp_llm: LLM, single: list[list[int]]) -> None:
    assert dist.is_initialized() and dist.get_world_size() == 2
    heads = tp_llm.model.model.layers[tp_llm.config.attention_layers[0]].self_attn.num_heads
    assert heads == tp_llm.config.num_attention_heads // 2, "rank 0 holds half the heads"
    kv = next(iter(tp_llm.engine.cache.keys.values()))
    assert kv.shape[1] == tp_llm.config.num_key_value_heads // 2, "and half the KV heads in its cache"
    assert _outputs(tp_llm) == single


def test_close_stops_the_other_rank(tiny_model_dir: Path, tp_llm: LLM) -> None:
    workers = tp_llm._workers
    assert workers is not None and all(p.is_alive() for p in workers.processes)
    tp_llm.close()
    assert all(not p.is_alive() for p in workers.processes)
    assert not dist.is_initialized()
    tp_llm.close()  # idempotent


def test_sizes_that_do_not_divide_the_model_are_refused_before_any_process_starts(
    tiny_model_dir: Path,
) -> None:
    with pytest.raises(InvalidRequestError, match="tensor_parallel_size|divide"):
        LLM(model=tiny_model_dir, engine=ENGINE, tensor_parallel_size=3)
    with pytest.raises(InvalidRequestError, match="tensor_parallel_size=0"):
        LLM(model=tiny_model_dir, engine=ENGINE, tensor_parallel_size=0)
    assert not dist.is_initialized()
