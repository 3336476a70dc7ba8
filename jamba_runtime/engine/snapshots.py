"""Prefix snapshots: a sequence's whole state at the end of its prompt, kept to start later prompts
that extend it without recomputing the prefix.

A snapshot shares the sequence's KV blocks (reference counts in `CacheManager`) and copies its
Mamba state slot into a slot of its own; restoring shares the blocks again (copying a partly
filled last block on write) and copies the slot back. Snapshots keep to the engine's
`num_snapshot_slots`, oldest dropped first: one that held a slot of the running batch's share
would keep a request from being admitted (the scheduler admits none without a slot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from jamba_runtime.cache.manager import CacheAllocation, CacheManager
from jamba_runtime.cache.paged import PagedHybridCache
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.errors import InvalidRequestError


@dataclass
class Snapshot:
    """A sequence's whole state at the end of a prompt: KV blocks (shared) + a copy of its slot."""

    key: str
    token_ids: list[int]
    alloc: CacheAllocation
    created: float = field(default_factory=time.monotonic)


class SnapshotStore:
    """The engine's snapshots by key, at most `capacity` of them (0: none are kept)."""

    def __init__(self, cache_manager: CacheManager, cache: PagedHybridCache, capacity: int) -> None:
        self.cache_manager = cache_manager
        self.cache = cache
        self.capacity = capacity
        self.snapshots: dict[str, Snapshot] = {}

    def save(self, key: str, seq: Sequence) -> None:
        """Keep `seq`'s state at the end of its prompt under `key` (replacing one of that key):
        share its KV blocks, copy its state slot. Skipped when every slot runs a sequence."""
        self.drop(key)
        while self.snapshots and len(self.snapshots) >= self.capacity:
            self.drop_oldest()
        if self.capacity == 0:
            return
        alloc = CacheAllocation()
        if not self.cache_manager.allocate_slot(alloc):
            if not self.drop_oldest():
                return  # every slot runs a sequence: skip the snapshot rather than stall
            self.cache_manager.allocate_slot(alloc)
        n = len(seq.prompt_token_ids)
        alloc.block_table = self.cache_manager.share_blocks(
            seq.alloc.block_table[: self.cache_manager.blocks_for(n)]
        )
        assert seq.alloc.slot is not None and alloc.slot is not None
        self.cache.copy_slot(seq.alloc.slot, alloc.slot)
        self.snapshots[key] = Snapshot(key, list(seq.prompt_token_ids), alloc)

    def restore(self, seq: Sequence, key: str) -> None:
        """Start `seq` from snapshot `key` when its prompt extends the snapshot's tokens (else, or
        when no slot or block is free, `seq` stays as it was and is prefilled whole).

        Raises `InvalidRequestError` for an unknown key."""
        snap = self.snapshots.get(key)
        if snap is None:
            raise InvalidRequestError(f"no prefix snapshot named {key!r}: save one first (save_snapshot=...)")
        n = len(snap.token_ids)
        # The Mamba state is only valid exactly at the snapshot's end, and the last prompt token
        # must still run for its logits: the prompt must extend the snapshot.
        if len(seq.prompt_token_ids) <= n or seq.prompt_token_ids[:n] != snap.token_ids:
            return
        if not self.cache_manager.allocate_slot(seq.alloc):
            return
        blocks = self.cache_manager.share_blocks(snap.alloc.block_table)
        if n % self.cache_manager.block_size:
            # Copy-on-write: the last block is partly filled and this request writes after the prefix.
            fresh = CacheAllocation()
            if not self.cache_manager.ensure_blocks(fresh, 1):
                seq.alloc.block_table = blocks
                self.cache_manager.free(seq.alloc)
                return
            self.cache.copy_block(blocks[-1], fresh.block_table[0])
            self.cache_manager.free(CacheAllocation(block_table=[blocks[-1]]))
            blocks[-1] = fresh.block_table[0]
        seq.alloc.block_table = blocks
        assert seq.alloc.slot is not None and snap.alloc.slot is not None
        self.cache.copy_slot(snap.alloc.slot, seq.alloc.slot)
        seq.num_computed_tokens = n

    def drop(self, key: str) -> None:
        """Forget `key` (its blocks and slot return to the pool); no-op if unknown."""
        snap = self.snapshots.pop(key, None)
        if snap is not None:
            self.cache_manager.free(snap.alloc)

    def drop_oldest(self) -> bool:
        """Drop the oldest snapshot; False when there is none."""
        if not self.snapshots:
            return False
        self.drop(min(self.snapshots.values(), key=lambda s: s.created).key)
        return True
