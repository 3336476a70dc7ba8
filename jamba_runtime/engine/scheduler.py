"""Which sequences run in the next step, and how many of their tokens. Pure bookkeeping: no torch.

Each step has a token budget (`max_num_batched_tokens`). Running decodes are served first, then
prefills already under way, then waiting requests by (priority, arrival): so a long prompt is fed
in chunks across steps and never stalls the decodes. One prompt takes at most
`long_prefill_token_threshold` tokens of a step, so a long prompt adds one bounded chunk to the
running sequences' step time. A prefill chunk carries the Mamba state in the sequence's slot to the
next chunk. When blocks run out, the lowest-priority, latest-arrived running sequence is preempted:
its cache is freed and it is recomputed later from its tokens.

The waiting queue is a heap with lazy deletion: adding, admitting and aborting a request cost
O(log n) in the number waiting (an abort marks the entry dead; dead entries are dropped when they
reach the top, or all at once when they outnumber the live ones). Running sequences sit in a dict
(at most `max_num_seqs`), so finishing any sequence costs O(1).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any

from jamba_runtime.cache.manager import CacheManager
from jamba_runtime.engine.sequence import Sequence, SequenceStatus

# Dead entries are dropped all at once when there are more of them than this and than live ones.
_MIN_COMPACT = 64


@dataclass(frozen=True)
class SchedulerConfig:
    """max_num_seqs: most sequences running at once. max_num_batched_tokens: token budget per
    step (prefill chunks + decodes). long_prefill_token_threshold: most tokens of one prompt in a
    step (0: up to the whole budget)."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    long_prefill_token_threshold: int = 0


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # new tokens of this sequence in the step


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    preempted: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


# A waiting entry: [priority, arrival, tiebreak, seq]; seq is None once the entry is dead. A list,
# not a dataclass: heap order is then compared in C (tiebreak is unique, so seq is never compared).
_Entry = list[Any]


class Scheduler:
    """FCFS by default; a lower `Sequence.priority` number runs first (and is preempted last)."""

    def __init__(self, config: SchedulerConfig, cache: CacheManager) -> None:
        self.config = config
        self.cache = cache
        self._heap: list[_Entry] = []
        self._entries: dict[int, _Entry] = {}  # id(seq) -> its live heap entry
        self._holding: dict[int, _Entry] = {}  # the waiting ones that hold cache (restored prefixes)
        self._running: dict[int, Sequence] = {}  # id(seq) -> seq, in admission order
        self._tiebreak = itertools.count()  # equal (priority, arrival) keep the order they came in

    # ---- queues ----------------------------------------------------------------------------------
    @property
    def waiting(self) -> list[Sequence]:
        """The waiting sequences in admission order (a sorted copy: O(n log n), for inspection)."""
        return [e[3] for e in sorted(self._entries.values(), key=lambda e: e[:3])]

    @property
    def running(self) -> list[Sequence]:
        """The running sequences in admission order (a copy)."""
        return list(self._running.values())

    @property
    def num_waiting(self) -> int:
        return len(self._entries)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def add(self, seq: Sequence) -> None:
        """Queue `seq` (new, or preempted) by (priority, arrival). O(log n)."""
        assert id(seq) not in self._entries and id(seq) not in self._running, "queued twice"
        seq.status = SequenceStatus.WAITING
        entry: _Entry = [seq.priority, seq.arrival, next(self._tiebreak), seq]
        heapq.heappush(self._heap, entry)
        self._entries[id(seq)] = entry
        if _holds_cache(seq):
            self._holding[id(seq)] = entry

    def has_unfinished(self) -> bool:
        return bool(self._entries or self._running)

    def finish(self, seq: Sequence) -> None:
        """Free a finished or aborted sequence's cache, wherever it is. O(1)."""
        self._running.pop(id(seq), None)
        self._drop_waiting(seq)
        self.cache.free(seq.alloc)
        seq.status = SequenceStatus.FINISHED

    def release_waiting_holds(self) -> bool:
        """Free the cache of every waiting sequence that holds some (requests restored from a
        snapshot; they are recomputed from their tokens). True if any did."""
        if not self._holding:
            return False
        for entry in self._holding.values():
            seq = entry[3]
            self.cache.free(seq.alloc)
            seq.num_computed_tokens = 0
        self._holding.clear()
        return True

    # ---- the plan --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted: list[Sequence] = []
        # Decodes first, then prefills under way; each by priority, then arrival.
        order = sorted(
            self._running.values(), key=lambda s: (s.num_tokens - s.num_computed_tokens > 1, *_order(s))
        )
        for seq in order:
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue
            n = self._chunk(seq, budget)
            while not self.cache.ensure_blocks(seq.alloc, seq.num_computed_tokens + n):
                # The victim is chosen among all running sequences, `seq` included: a decode is
                # served before an earlier or higher-priority prefill, but must not evict it.
                victim = self._victim()
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break  # it waits for the others to finish
                scheduled = [s for s in scheduled if s.seq is not victim]
            else:
                scheduled.append(ScheduledSeq(seq, n))
                budget -= n
        budget = self.config.max_num_batched_tokens - sum(s.num_tokens for s in scheduled)
        # Admit waiting requests only when nothing was preempted: a preempted one would come back
        # straight away and thrash.
        while budget > 0 and not preempted and len(self._running) < self.config.max_num_seqs:
            seq = self._head()
            if seq is None:
                break
            n = self._chunk(seq, budget)
            fits = seq.alloc.slot is not None or self.cache.num_free_slots > 0
            if not (fits and self.cache.can_grow(seq.alloc, seq.num_computed_tokens + n)):
                # Requests restored from a snapshot hold a slot and blocks while they wait. Give
                # those behind `seq` up (latest first; they are recomputed) rather than let the
                # batch shrink until it empties: running sequences free nothing before they end.
                if self._release_restored_behind(seq):
                    continue
                break
            self._drop_waiting(seq)
            self.cache.allocate_slot(seq.alloc)
            self.cache.ensure_blocks(seq.alloc, seq.num_computed_tokens + n)
            seq.status = SequenceStatus.RUNNING
            self._running[id(seq)] = seq
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return SchedulerOutput(scheduled, preempted)

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """How many of `seq`'s remaining tokens run now: all that fit the budget, and for a
        prompt no more than `long_prefill_token_threshold`."""
        n = min(seq.num_tokens - seq.num_computed_tokens, budget)
        cap = self.config.long_prefill_token_threshold
        return min(n, cap) if cap > 0 else n

    # ---- internals -------------------------------------------------------------------------------
    def _head(self) -> Sequence | None:
        """The first waiting sequence by (priority, arrival), dead entries dropped on the way."""
        heap = self._heap
        while heap and heap[0][3] is None:
            heapq.heappop(heap)
        return heap[0][3] if heap else None

    def _drop_waiting(self, seq: Sequence) -> None:
        """Take `seq` off the waiting queue if it is there: its entry dies (lazy deletion)."""
        entry = self._entries.pop(id(seq), None)
        if entry is None:
            return
        entry[3] = None
        self._holding.pop(id(seq), None)
        heap = self._heap
        while heap and heap[0][3] is None:
            heapq.heappop(heap)
        dead = len(heap) - len(self._entries)
        if dead > _MIN_COMPACT and dead > len(self._entries):
            # Amortized O(1) per deletion: the heap never holds more dead entries than live ones
            # (and no dead entry keeps its sequence, and so its tokens, alive).
            self._heap = [e for e in heap if e[3] is not None]
            heapq.heapify(self._heap)

    def _release_restored_behind(self, seq: Sequence) -> bool:
        """Free the cache of the latest waiting request after `seq` that holds any; True if one did."""
        head = self._entries[id(seq)][:3]
        behind = [e for e in self._holding.values() if e[:3] > head]
        if not behind:
            return False
        entry = max(behind, key=lambda e: e[:3])
        other = entry[3]
        self.cache.free(other.alloc)
        other.num_computed_tokens = 0
        del self._holding[id(other)]
        return True

    def _victim(self) -> Sequence:
        """The lowest-priority, latest-arrived running sequence."""
        return max(self._running.values(), key=_order)

    def _preempt(self, seq: Sequence) -> None:
        del self._running[id(seq)]
        self.cache.free(seq.alloc)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.add(seq)


def _order(seq: Sequence) -> tuple[int, int]:
    return (seq.priority, seq.arrival)


def _holds_cache(seq: Sequence) -> bool:
    return seq.alloc.slot is not None or bool(seq.alloc.block_table)
