"""Bookkeeping of the hybrid cache: KV blocks and Mamba state slots. No torch, no model code.

Two pools, sized once:
- KV blocks of `block_size` tokens for the attention layers. A sequence holds a block table that
  grows as it does; blocks are reference-counted so a prefix snapshot and the requests restored
  from it can share full blocks.
- Mamba state slots (conv window + SSM state for every Mamba layer): one per running sequence,
  whatever its length, plus one per saved snapshot.

Invariant, checked by `check()`: free + used == total for both pools, and every used block's
reference count equals the number of holders.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class CacheAllocation:
    """What one holder (a running sequence or a snapshot) owns. `block_table` only grows by
    appends while held, and is otherwise replaced by a new list, never edited in place: the
    decode graphs rewrite a device row only when its list or length changes (`graphs.TableRows`)."""

    block_table: list[int] = field(default_factory=list)
    slot: int | None = None


class CacheManager:
    """Allocates KV blocks and state slots.

    Example:
        >>> cm = CacheManager(num_blocks=64, block_size=16, num_slots=8)
        >>> alloc = CacheAllocation()
        >>> cm.allocate_slot(alloc) and cm.ensure_blocks(alloc, 40)   # 3 blocks, 1 slot
        >>> cm.free(alloc)
    """

    def __init__(self, num_blocks: int, block_size: int, num_slots: int) -> None:
        assert num_blocks > 0 and block_size > 0 and num_slots > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_slots = num_slots
        self._free_blocks: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks
        self._free_slots: deque[int] = deque(range(num_slots))

    # ---- counts ----------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_blocks)

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def num_used_slots(self) -> int:
        return self.num_slots - len(self._free_slots)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- allocation ------------------------------------------------------------------------------
    def allocate_slot(self, alloc: CacheAllocation) -> bool:
        """Give `alloc` a state slot if it has none; False when none is free."""
        if alloc.slot is not None:
            return True
        if not self._free_slots:
            return False
        alloc.slot = self._free_slots.popleft()
        return True

    def can_grow(self, alloc: CacheAllocation, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(alloc.block_table) <= len(self._free_blocks)

    def ensure_blocks(self, alloc: CacheAllocation, num_tokens: int) -> bool:
        """Grow `alloc`'s block table to hold `num_tokens`; all or nothing (False: not enough free)."""
        need = self.blocks_for(num_tokens) - len(alloc.block_table)
        if need <= 0:
            return True
        if need > len(self._free_blocks):
            return False
        for _ in range(need):
            block = self._free_blocks.popleft()
            self._ref_counts[block] = 1
            alloc.block_table.append(block)
        return True

    def share_blocks(self, blocks: list[int]) -> list[int]:
        """Take another reference to `blocks` (already used) and return them, for a new holder."""
        for b in blocks:
            assert self._ref_counts[b] > 0, "only used blocks can be shared"
            self._ref_counts[b] += 1
        return list(blocks)

    def free(self, alloc: CacheAllocation) -> None:
        """Release everything `alloc` holds; a block returns to the pool when its last holder lets go."""
        for b in alloc.block_table:
            self._ref_counts[b] -= 1
            assert self._ref_counts[b] >= 0
            if self._ref_counts[b] == 0:
                self._free_blocks.append(b)
        alloc.block_table = []
        if alloc.slot is not None:
            self._free_slots.append(alloc.slot)
            alloc.slot = None

    # ---- checks ----------------------------------------------------------------------------------
    def check(self, holders: list[CacheAllocation] | None = None) -> None:
        """Assert the pool invariants (and, given every holder, the exact reference counts)."""
        free = set(self._free_blocks)
        assert len(free) == len(self._free_blocks), "a block is on the free list twice"
        assert all(self._ref_counts[b] == 0 for b in free), "a free block still has holders"
        assert sum(1 for c in self._ref_counts if c > 0) + len(free) == self.num_blocks
        assert len(set(self._free_slots)) == len(self._free_slots), "a slot is on the free list twice"
        if holders is None:
            return
        counts = [0] * self.num_blocks
        slots = [h.slot for h in holders if h.slot is not None]
        for h in holders:
            for b in h.block_table:
                counts[b] += 1
        assert counts == self._ref_counts, "reference counts differ from the holders' block tables"
        assert len(set(slots)) == len(slots), "two holders share a state slot"
        assert not set(slots) & set(self._free_slots), "a held slot is also free"
        assert len(slots) + len(self._free_slots) == self.num_slots
