"""Helpers shared by the engine tests: random prompts, an exact cache size, the clean-engine check."""

from __future__ import annotations

import random

from jamba_runtime import JambaForCausalLM, LLMEngine
from jamba_runtime.cache.paged import block_bytes, slot_bytes

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
