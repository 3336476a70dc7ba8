"""`TableRows`: the rows a decode graph's device block tables must rewrite, checked against a host
mirror through random batches (tables grow, are replaced, sequences leave, arrive and move rows)."""

from __future__ import annotations

import random

import numpy as np

from jamba_runtime.cache.manager import CacheAllocation, CacheManager
from jamba_runtime.engine.graphs import TableRows


def test_writing_only_the_changed_rows_keeps_every_row_right() -> None:
    rng = random.Random(0)
    manager = CacheManager(num_blocks=4000, block_size=4, num_slots=16)
    rows = TableRows(16)
    mirror = np.full((16, 1000), -1)  # what the device holds
    running: list[tuple[CacheAllocation, int]] = []  # (allocation, tokens)
    written = occupied = 0
    for _step in range(400):
        if len(running) < 16 and rng.random() < 0.2:  # an arrival
            alloc = CacheAllocation()
            assert manager.ensure_blocks(alloc, rng.randrange(1, 40))
            running.insert(rng.randrange(len(running) + 1), (alloc, len(alloc.block_table) * 4))
        if running and rng.random() < 0.1:  # a sequence leaves: the rows after it move up
            alloc, _ = running.pop(rng.randrange(len(running)))
            manager.free(alloc)
        if running and rng.random() < 0.05:  # preempted and readmitted: a new list of new blocks
            i = rng.randrange(len(running))
            alloc, tokens = running[i]
            manager.free(alloc)
            assert manager.ensure_blocks(alloc, tokens)
        grown = []
        for alloc, tokens in running:  # one token each, a new block every 4
            assert manager.ensure_blocks(alloc, tokens + 1)
            grown.append((alloc, tokens + 1))
        running = grown
        tables = [a.block_table for a, _ in running]
        changed = rows.changed(tables)
        written += len(changed)
        occupied += len(tables)
        for r in changed:
            mirror[r, : len(tables[r])] = tables[r]
        for r, t in enumerate(tables):
            assert mirror[r, : len(t)].tolist() == t, (_step, r)
    assert occupied > 2000 and written < occupied / 2, "most rows are unchanged from one step to the next"
