"""A long waiting queue on the real tiny engine: 40,000 requests added and aborted (a client with a
huge request that left), with some of them running; counts and the cache exact afterwards, and the
engine serves the next request as if nothing had happened."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, EngineConfig, LLMEngine, SamplingParams

N = 40_000
GREEDY = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(
        model=tiny_model_dir,
        engine=EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=8, cache_memory_gb=0.05),
    )


def assert_idle_and_clean(engine: LLMEngine) -> None:
    engine.check_cache()
    m = engine.metrics()
    assert (m.waiting, m.running, m.kv_blocks_used, m.state_slots_used) == (0, 0, 0, 0)
    assert not engine.requests and not engine.has_unfinished()


def test_forty_thousand_waiting_requests_abort_to_an_empty_engine(llm: LLM) -> None:
    engine = llm.engine
    probe = [7, 99, 13, 402, 5]
    expected = llm.generate([probe], GREEDY)[0].token_ids
    rng = random.Random(40)
    prompts = [[rng.randrange(3, 1024) for _ in range(rng.randint(1, 12))] for _ in range(64)]
    seqs = [engine.add_request(prompts[i % 64], GREEDY, request_id=f"r{i}", priority=i % 3) for i in range(N)]
    m = engine.metrics()
    assert (m.waiting, m.running) == (N, 0)
    # A few steps: 16 run (some mid-prompt with budget 64, some decoding), 39,984 wait.
    for _ in range(3):
        engine.step()
    m = engine.metrics()
    assert m.running == 16 and m.waiting == N - 16 and m.kv_blocks_used > 0
    running = {s.request_id for s in engine.scheduler.running}
    order = list(range(N))
    rng.shuffle(order)
    for i in order:
        engine.abort(f"r{i}")
        if i % 10_000 == 0:
            engine.check_cache()
    assert len(running) == 16 and all(s.finish_reason == "abort" for s in seqs)
    assert_idle_and_clean(engine)
    # Nothing of the 40,000 is left to step through: the next request runs at once, as before.
    assert engine.step() == []
    assert llm.generate([probe], GREEDY)[0].token_ids == expected
    assert_idle_and_clean(engine)


def test_waiting_requests_aborted_between_steps_leave_the_others_exact(llm: LLM) -> None:
    """Aborts of waiting and running requests interleaved with steps: the survivors' outputs equal
    their outputs alone."""
    engine = llm.engine
    rng = random.Random(41)
    prompts = [[rng.randrange(3, 1024) for _ in range(rng.randint(1, 20))] for _ in range(2_000)]
    keep = set(rng.sample(range(len(prompts)), 24))
    seqs = [engine.add_request(p, GREEDY, request_id=f"q{i}") for i, p in enumerate(prompts)]
    doomed = [i for i in range(len(prompts)) if i not in keep]
    rng.shuffle(doomed)
    while doomed:
        for i in doomed[:150]:
            if f"q{i}" in engine.requests:  # it may have finished already
                engine.abort(f"q{i}")
        doomed = doomed[150:]
        engine.step()
        engine.check_cache()
    while engine.has_unfinished():
        engine.step()
    assert_idle_and_clean(engine)
    alone = llm.generate([prompts[i] for i in sorted(keep)], GREEDY)
    assert [seqs[i].output_token_ids for i in sorted(keep)] == [o.token_ids for o in alone]
    assert all(seqs[i].finish_reason == "length" for i in keep)
