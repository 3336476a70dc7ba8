"""Which sequences run in the next step, and how many of their tokens. Pure bookkeeping: no torch.

Each step has a token budget (`max_num_batched_tokens`). Running decodes are served first, then
prefills already under way, then waiting requests by (priority, arrival): so a long prompt is fed
in chunks across steps and never stalls the decodes. A prefill chunk carries the Mamba state in the
sequence's slot to the next chunk. When blocks run out, the lowest-priority, latest-arrived running
sequence is preempted: its cache is freed and it is recomputed later from its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from jamba_runtime.cache.manager import CacheManager
from jamba_runtime.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    """max_num_seqs: most sequences running at once. max_num_batched_tokens: token budget per
    step (prefill chunks + decodes)."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048


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


class Scheduler:
    """FCFS by default; a lower `Sequence.priority` number runs first (and is preempted last)."""

    def __init__(self, config: SchedulerConfig, cache: CacheManager) -> None:
        self.config = config
        self.cache = cache
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self.waiting.sort(key=_order)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted: list[Sequence] = []
        # Decodes first, then prefills under way; each by priority, then arrival.
        order = sorted(self.running, key=lambda s: (s.num_tokens - s.num_computed_tokens > 1, *_order(s)))
        for seq in order:
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
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
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            fits = seq.alloc.slot is not None or self.cache.num_free_slots > 0
            if not (fits and self.cache.can_grow(seq.alloc, seq.num_computed_tokens + n)):
                # Requests restored from a snapshot hold a slot and blocks while they wait. Give
                # those behind `seq` up (latest first; they are recomputed) rather than let the
                # batch shrink until it empties: running sequences free nothing before they end.
                if self._release_restored_behind(seq):
                    continue
                break
            self.waiting.pop(0)
            self.cache.allocate_slot(seq.alloc)
            self.cache.ensure_blocks(seq.alloc, seq.num_computed_tokens + n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return SchedulerOutput(scheduled, preempted)

    def finish(self, seq: Sequence) -> None:
        """Free a finished or aborted sequence's cache, wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.cache.free(seq.alloc)
        seq.status = SequenceStatus.FINISHED

    def _release_restored_behind(self, seq: Sequence) -> bool:
        """Free the cache of the latest waiting request after `seq` that holds any; True if one did."""
        for other in reversed(self.waiting):
            if other is seq:
                return False
            if other.alloc.slot is not None or other.alloc.block_table:
                self.cache.free(other.alloc)
                other.num_computed_tokens = 0
                return True
        return False

    def _victim(self) -> Sequence:
        """The lowest-priority, latest-arrived running sequence."""
        return max(self.running, key=_order)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.free(seq.alloc)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.add(seq)


def _order(seq: Sequence) -> tuple[int, int]:
    return (seq.priority, seq.arrival)
