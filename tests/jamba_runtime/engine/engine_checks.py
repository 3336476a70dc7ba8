"""Helpers shared by the engine tests: random prompts, an exact cache size, the clean-engine check,
and a run with requests arriving between steps."""

from __future__ import annotations

import random

from jamba_runtime import JambaForCausalLM, LLMEngine, SamplingParams
from jamba_runtime.cache.paged import block_bytes, slot_bytes
from jamba_runtime.engine.sequence import Sequence

_GIB = 1 << 30


def random_prompts(n: int, lengths: tuple[int, int], seed: int, vocab: int = 1024) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(*lengths))] for _ in range(n)]


def cache_gb(model: JambaForCausalLM, num_slots: int, num_blocks: int, block_size: int) -> float:
    """The `cache_memory_gb` that gives exactly `num_blocks` KV blocks next to `num_slots` slots."""
    per_block = block_bytes(model.config, block_size, model.dtype)
    per_slot = slot_bytes(model.config, model.dtype)
    return (num_slots * per_slot + num_blocks * per_block + per_block // 2) / _GIB


def assert_clean(engine: LLMEngine) -> None:
    """Exact counts against every holder, and nothing held but what snapshots keep."""
    engine.check_cache()
    m = engine.metrics()
    assert m.waiting == 0 and m.running == 0 and not engine.requests
    kept = {b for s in engine.snapshots.values() for b in s.alloc.block_table}
    assert m.kv_blocks_used == len(kept)
    assert m.state_slots_used == len(engine.snapshots)


def run_staggered(
    engine: LLMEngine,
    prompts: list[list[int]],
    params: list[SamplingParams],
    rng: random.Random | None,
) -> list[Sequence]:
    """Submit the prompts a few at a time between steps (0 to 3 per step; all at once when `rng`
    is None), run to the end, checking the cache after every step."""
    seqs: list[Sequence] = []
    while len(seqs) < len(prompts) or engine.has_unfinished():
        for _ in range(rng.randint(0, 3) if rng is not None else len(prompts)):
            if len(seqs) < len(prompts):
                i = len(seqs)
                seqs.append(engine.add_request(prompts[i], params[i], request_id=f"r{i}"))
        engine.step()
        engine.check_cache()
    assert all(s.finished for s in seqs)
    return seqs
