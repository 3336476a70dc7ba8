"""CacheManager: exact block and slot counts, reference-counted sharing, and `check()` itself."""

from __future__ import annotations

import random

import pytest

from jamba_runtime.cache.manager import CacheAllocation, CacheManager


def test_blocks_grow_all_or_nothing_and_return_on_free() -> None:
    cm = CacheManager(num_blocks=5, block_size=4, num_slots=2)
    a, b = CacheAllocation(), CacheAllocation()
    assert cm.blocks_for(0) == 0 and cm.blocks_for(1) == 1 and cm.blocks_for(4) == 1 and cm.blocks_for(5) == 2
    assert cm.allocate_slot(a) and cm.ensure_blocks(a, 9)  # 3 blocks
    assert cm.num_used_blocks == 3 and cm.num_used_slots == 1
    assert cm.ensure_blocks(a, 12) and len(a.block_table) == 3  # still fits in 3
    assert not cm.can_grow(b, 12) and not cm.ensure_blocks(b, 12)  # 3 needed, 2 free: take nothing
    assert b.block_table == [] and cm.num_free_blocks == 2
    assert cm.allocate_slot(b) and cm.ensure_blocks(b, 8)
    assert not cm.allocate_slot(CacheAllocation())  # both slots taken
    assert cm.allocate_slot(a)  # a holder that has a slot keeps it
    cm.check([a, b])
    cm.free(a)
    cm.free(a)  # freeing twice is a no-op
    assert cm.num_free_blocks == 3 and cm.num_free_slots == 1
    cm.free(b)
    cm.check([])
    assert cm.num_free_blocks == 5 and cm.num_free_slots == 2


def test_shared_block_returns_only_when_last_holder_lets_go() -> None:
    cm = CacheManager(num_blocks=4, block_size=4, num_slots=3)
    seq = CacheAllocation()
    cm.allocate_slot(seq)
    cm.ensure_blocks(seq, 7)
    snap = CacheAllocation(block_table=cm.share_blocks(seq.block_table))
    cm.allocate_slot(snap)
    cm.check([seq, snap])
    cm.free(seq)
    assert cm.num_used_blocks == 2  # the snapshot still holds them
    cm.check([snap])
    with pytest.raises(AssertionError):
        cm.share_blocks([3])  # a free block cannot be shared
    cm.free(snap)
    cm.check([])
    assert cm.num_free_blocks == 4 and cm.num_free_slots == 3


def test_check_catches_wrong_counts() -> None:
    """The random test below is only as good as `check()`: it must see a missing holder, a block
    counted twice and a slot given to two holders."""
    cm = CacheManager(num_blocks=4, block_size=2, num_slots=2)
    a = CacheAllocation()
    cm.allocate_slot(a)
    cm.ensure_blocks(a, 3)
    with pytest.raises(AssertionError):
        cm.check([])  # a's blocks are used but nobody is said to hold them
    with pytest.raises(AssertionError):
        cm.check([a, CacheAllocation(block_table=[a.block_table[0]])])  # a reference not taken
    with pytest.raises(AssertionError):
        cm.check([a, CacheAllocation(slot=a.slot)])  # one slot, two holders
    cm._free_blocks.append(cm._free_blocks[0])  # corrupt the free list
    with pytest.raises(AssertionError):
        cm.check([a])


def test_random_operations_keep_exact_counts() -> None:
    """1,000 random allocate / grow / share (snapshot) / copy-on-write restore / free operations:
    `check()` with every holder after each one, and all blocks and slots free at the end."""
    rng = random.Random(1234)
    cm = CacheManager(num_blocks=40, block_size=4, num_slots=6)
    seqs: list[tuple[CacheAllocation, int]] = []  # (allocation, tokens it holds)
    snaps: list[tuple[CacheAllocation, int]] = []
    counts = {"grow": 0, "grow_refused": 0, "share": 0, "restore": 0, "free": 0}
    for _ in range(1000):
        op = rng.choice(["new", "grow", "grow", "share", "restore", "free_seq", "free_snap"])
        if op == "new":
            alloc = CacheAllocation()
            if cm.allocate_slot(alloc):
                seqs.append((alloc, 0))
        elif op == "grow" and seqs:
            i = rng.randrange(len(seqs))
            alloc, n = seqs[i]
            want = n + rng.randint(1, 20)
            free_before = cm.num_free_blocks
            if cm.ensure_blocks(alloc, want):
                seqs[i] = (alloc, want)
                counts["grow"] += 1
            else:
                assert cm.num_free_blocks == free_before  # all or nothing
                counts["grow_refused"] += 1
        elif op == "share" and seqs:
            alloc, n = rng.choice(seqs)
            snap = CacheAllocation()
            if n and cm.allocate_slot(snap):
                snap.block_table = cm.share_blocks(alloc.block_table[: cm.blocks_for(n)])
                snaps.append((snap, n))
                counts["share"] += 1
        elif op == "restore" and snaps:
            # As the engine restores a snapshot: share its blocks, copy-on-write a partial last one.
            snap, n = rng.choice(snaps)
            alloc = CacheAllocation()
            if cm.allocate_slot(alloc):
                alloc.block_table = cm.share_blocks(snap.block_table)
                if n % cm.block_size:
                    fresh = CacheAllocation()
                    if cm.ensure_blocks(fresh, 1):
                        cm.free(CacheAllocation(block_table=[alloc.block_table[-1]]))
                        alloc.block_table[-1] = fresh.block_table[0]
                        seqs.append((alloc, n))
                        counts["restore"] += 1
                    else:
                        cm.free(alloc)
                else:
                    seqs.append((alloc, n))
                    counts["restore"] += 1
        elif op == "free_seq" and seqs:
            cm.free(seqs.pop(rng.randrange(len(seqs)))[0])
            counts["free"] += 1
        elif op == "free_snap" and snaps:
            cm.free(snaps.pop(rng.randrange(len(snaps)))[0])
            counts["free"] += 1
        holders = [a for a, _ in seqs + snaps]
        cm.check(holders)
        assert cm.num_used_slots == len(holders)
        assert cm.num_used_blocks == len({b for h in holders for b in h.block_table})
    assert all(c > 10 for c in counts.values()), counts  # every path was exercised
    for alloc, _ in seqs + snaps:
        cm.free(alloc)
    cm.check([])
    assert cm.num_free_blocks == cm.num_blocks and cm.num_free_slots == cm.num_slots
