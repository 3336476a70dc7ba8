"""The engine on 2 tensor-parallel ranks (`LLM(..., tensor_parallel_size=2)`): rank 0 here, rank 1
a spawned gloo process on CPU. Its outputs equal the single-process engine's, through chunked
prefill, continuous batching and a restored prefix snapshot (whose slot and block copies rank 1
must mirror)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jamba_runtime import LLM, EngineConfig, SamplingParams
from jamba_runtime.engine.tensor_parallel import run_follower
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


def _launched_rank(rank: int, world: int, init_file: str, model_dir: str, out_file: str) -> None:
    """One process of a group a launcher made (as torchrun does): rank 0 builds the LLM, which
    attaches to the group; rank 1 follows."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == 0:
            with LLM(model=model_dir, engine=ENGINE, tensor_parallel_size=world) as llm:
                Path(out_file).write_text(json.dumps(_outputs(llm)))
            assert dist.is_initialized(), "the launcher's group outlives the LLM"
        else:
            assert run_follower(model_dir, device="cpu", dtype="float32") > 0
        # Tear the group down together, as a launched program should: a rank destroying it
        # while its peer has already gone once aborted in gloo ("terminate called without an
        # active exception", exit -6) under CI load.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_under_a_launcher_rank_0_attaches_and_the_others_follow(
    tiny_model_dir: Path, single: list[list[int]], tmp_path: Path
) -> None:
    ctx = mp.get_context("spawn")
    out = tmp_path / "outputs.json"
    args = (2, str(tmp_path / "init"), str(tiny_model_dir), str(out))
    procs = [ctx.Process(target=_launched_rank, args=(r, *args)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert json.loads(out.read_text()) == single
