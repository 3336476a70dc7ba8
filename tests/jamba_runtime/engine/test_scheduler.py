"""Scheduler on CPU from builders, no model: budget, decodes first, chunked prefill, priority,
preemption, and a randomized run with the cache checked after every operation."""

from __future__ import annotations

import gc
import random
import weakref

from jamba_runtime import SamplingParams
from jamba_runtime.cache.manager import CacheAllocation, CacheManager
from jamba_runtime.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from jamba_runtime.engine.sequence import Sequence, SequenceStatus

EOS = 0


class _Decoder:
    def add(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def make_seq(prompt_len: int, max_tokens: int = 8, priority: int = 0) -> Sequence:
    return Sequence(
        prompt_token_ids=list(range(1, prompt_len + 1)),
        params=SamplingParams(max_tokens=max_tokens, temperature=0),
        decoder=_Decoder(),
        eos_token_ids=frozenset({EOS}),
        max_new_tokens=max_tokens,
        priority=priority,
    )


def make_scheduler(
    num_blocks: int = 256, block_size: int = 4, num_slots: int = 16, max_num_seqs: int = 16, budget: int = 64
) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs, budget), CacheManager(num_blocks, block_size, num_slots))


def advance(sched: Scheduler, out: SchedulerOutput, token: int = 7) -> list[Sequence]:
    """What the engine does after the forward: count the tokens as computed, sample for those that
    caught up, free the finished. Returns the finished sequences."""
    finished = []
    for item in out.scheduled:
        item.seq.num_computed_tokens += item.num_tokens
        if item.seq.num_computed_tokens == item.seq.num_tokens:
            item.seq.append_token(token)
            if item.seq.finished:
                sched.finish(item.seq)
                finished.append(item.seq)
    return finished


def holders(sched: Scheduler) -> list[CacheAllocation]:
    return [s.alloc for s in sched.running + sched.waiting]


def is_decode(seq: Sequence) -> bool:
    """One token left, after some were computed (for a sequence that was running)."""
    return seq.num_computed_tokens > 0 and seq.num_tokens - seq.num_computed_tokens == 1


def check_step(sched: Scheduler, out: SchedulerOutput, running_before: set[int]) -> None:
    """Properties every schedule() result has (checked before `advance`)."""
    cfg, cache = sched.config, sched.cache
    assert out.num_tokens <= cfg.max_num_batched_tokens
    assert len(sched.running) <= cfg.max_num_seqs
    assert len({id(s.seq) for s in out.scheduled}) == len(out.scheduled)
    # Order of service: running decodes, then running prefill chunks, then admissions.
    kinds = [2 if id(s.seq) not in running_before else 0 if is_decode(s.seq) else 1 for s in out.scheduled]
    assert kinds == sorted(kinds), "a prefill chunk or an admission was served before a decode"
    for item in out.scheduled:
        seq = item.seq
        assert seq.status is SequenceStatus.RUNNING and seq in sched.running
        assert 0 < item.num_tokens <= seq.num_tokens - seq.num_computed_tokens
        assert seq.alloc.slot is not None
        assert len(seq.alloc.block_table) * cache.block_size >= seq.num_computed_tokens + item.num_tokens
    for seq in out.preempted:
        assert id(seq) in running_before and seq in sched.waiting
        assert seq.num_computed_tokens == 0 and seq.alloc.block_table == [] and seq.alloc.slot is None
    if out.preempted:
        assert not any(id(s.seq) not in running_before for s in out.scheduled), "admitted while preempting"
    # A running sequence is left out only when the budget ran out or blocks did (preemption).
    scheduled = {id(s.seq) for s in out.scheduled}
    skipped = [s for s in sched.running if id(s) not in scheduled]
    assert not skipped or out.num_tokens == cfg.max_num_batched_tokens or out.preempted


def test_budget_decodes_first_and_chunked_prefill_keeps_decodes_running() -> None:
    sched = make_scheduler(budget=16)
    short = [make_seq(3, max_tokens=50) for _ in range(3)]
    for s in short:
        sched.add(s)
    out = sched.schedule()
    assert [s.num_tokens for s in out.scheduled] == [3, 3, 3]
    advance(sched, out)
    long = make_seq(100, max_tokens=4)
    sched.add(long)
    chunks = []
    for _ in range(8):
        running_before = {id(s) for s in sched.running}
        out = sched.schedule()
        check_step(sched, out, running_before)
        # Every decode runs every step, first; the long prompt takes what is left of the budget.
        assert [s.seq for s in out.scheduled[:3]] == short
        assert all(s.num_tokens == 1 for s in out.scheduled[:3])
        assert out.scheduled[3].seq is long and out.num_tokens <= 16
        chunks.append(out.scheduled[3].num_tokens)
        advance(sched, out)
        if long.output_token_ids:
            break
    assert chunks == [13] * 7 + [9]  # 100 prompt tokens in 8 chunks
    assert len(long.output_token_ids) == 1 and all(len(s.output_token_ids) == 9 for s in short)
    # Budget 3 and four one-token prompts: three are admitted; then their decodes fill the budget
    # and the fourth keeps waiting.
    sched = make_scheduler(budget=3)
    seqs = [make_seq(1, max_tokens=10) for _ in range(4)]
    for s in seqs:
        sched.add(s)
    advance(sched, sched.schedule())  # admits three (budget), first tokens sampled
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == seqs[:3] and out.num_tokens == 3
    assert sched.waiting == [seqs[3]]


def test_running_prefill_is_continued_before_new_admissions() -> None:
    sched = make_scheduler(budget=10)
    a, b = make_seq(25), make_seq(25)
    sched.add(a)
    advance(sched, sched.schedule())
    sched.add(b)
    out = sched.schedule()
    assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(a, 10)]
    advance(sched, out)
    out = sched.schedule()
    assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(a, 5), (b, 5)]


def test_admission_by_priority_then_arrival() -> None:
    sched = make_scheduler(max_num_seqs=1, budget=64)
    seqs = [make_seq(4, max_tokens=1, priority=p) for p in [2, 0, 1, 0, 2]]
    for s in seqs:
        sched.add(s)
    order = []
    while sched.has_unfinished():
        out = sched.schedule()
        assert len(out.scheduled) == 1 and len(sched.running) == 1  # max_num_seqs
        order += [s.seq for s in out.scheduled if s.seq.num_computed_tokens == 0]
        advance(sched, out)
    assert order == [seqs[1], seqs[3], seqs[2], seqs[0], seqs[4]]
    sched.cache.check([])


def test_max_num_seqs_and_slots_bound_admission() -> None:
    sched = make_scheduler(max_num_seqs=3, num_slots=5, budget=1000)
    seqs = [make_seq(5, max_tokens=3) for _ in range(7)]
    for s in seqs:
        sched.add(s)
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == seqs[:3] and len(sched.waiting) == 4
    # Fewer free slots than max_num_seqs (snapshots hold them): slots bound admission too.
    sched = make_scheduler(max_num_seqs=3, num_slots=2, budget=1000)
    for s in seqs[3:]:
        sched.add(s)
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == seqs[3:5]


def _fill_to_block_edge(sched: Scheduler, seqs: list[Sequence]) -> None:
    """Admit `seqs` (prompts of block_size - 1 tokens) and decode until the next token of each
    needs a new block."""
    for s in seqs:
        sched.add(s)
    advance(sched, sched.schedule())
    assert all(s.num_computed_tokens == 3 and s.num_tokens == 4 for s in seqs)
    advance(sched, sched.schedule())
    assert all(s.num_computed_tokens == 4 and len(s.alloc.block_table) == 1 for s in seqs)


def test_preemption_picks_lowest_priority_then_latest_arrival() -> None:
    # 4 blocks of 4 tokens, three sequences each holding one full block: the next decode step needs
    # three more blocks and one is free, so one sequence is preempted and its block reused.
    for priorities, victim in [([0, 5, 0], 1), ([0, 0, 0], 2)]:
        sched = make_scheduler(num_blocks=4, budget=64)
        seqs = [make_seq(3, 20, priority=p) for p in priorities]
        _fill_to_block_edge(sched, seqs)
        out = sched.schedule()
        assert out.preempted == [seqs[victim]]
        assert {id(s.seq) for s in out.scheduled} == {id(s) for i, s in enumerate(seqs) if i != victim}
        lost = seqs[victim]
        assert lost.num_preemptions == 1 and lost.num_computed_tokens == 0 and lost.alloc.slot is None
        assert sched.waiting == [lost] and lost.status is SequenceStatus.WAITING
        sched.cache.check(holders(sched))
        advance(sched, out)
        # Recompute: once room is made it comes back as a prefill of all its tokens (prompt + the
        # two it had sampled).
        sched.finish(out.scheduled[0].seq)
        out = sched.schedule()
        assert (out.scheduled[-1].seq, out.scheduled[-1].num_tokens) == (lost, 5)


def _decode_against_prefill(decoder: Sequence, prefiller: Sequence) -> SchedulerOutput:
    """3 blocks of 4: `decoder` (3-token prompt) runs first and decodes; `prefiller` (9-token
    prompt) joins and takes the other two blocks with a 7-token chunk. In the next step the decode
    (scheduled first) and the last prefill chunk each need a new block and none is free."""
    sched = make_scheduler(num_blocks=3, budget=8)
    sched.add(decoder)
    advance(sched, sched.schedule())
    sched.add(prefiller)
    out = sched.schedule()
    assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(decoder, 1), (prefiller, 7)]
    advance(sched, out)
    assert sched.cache.num_free_blocks == 0
    out = sched.schedule()
    sched.cache.check(holders(sched))
    return out


def test_preemption_never_evicts_a_higher_priority_sequence_for_a_lower_one() -> None:
    low, high = make_seq(3, 20, priority=5), make_seq(9, 20, priority=0)
    out = _decode_against_prefill(low, high)
    assert out.preempted == [low]
    assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(high, 2)]


def test_preemption_never_evicts_an_earlier_sequence_for_a_later_one() -> None:
    """FCFS: the decoding sequence arrived later than the one still prefilling (which was, say,
    preempted before and is being recomputed): the later one gives way."""
    late, early = make_seq(3, 20), make_seq(9, 20)
    early.arrival = late.arrival - 1
    out = _decode_against_prefill(late, early)
    assert out.preempted == [late]
    assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(early, 2)]


def test_random_operations_keep_cache_exact() -> None:
    """1,000 random operations (add with random priority, schedule + advance, abort, finish early,
    snapshot-like share and free, restore from a snapshot) on a pool small enough to force
    preemption; `check(holders)` after every operation; every block and slot free at the end."""
    rng = random.Random(2024)
    block_size = 4
    sched = make_scheduler(num_blocks=24, block_size=block_size, num_slots=8, max_num_seqs=5, budget=12)
    cache = sched.cache
    # A sequence alone always fits (as the engine's max_model_len guarantees): 30 + 20 <= 24 * 4.
    snaps: list[tuple[CacheAllocation, list[int]]] = []
    live: list[Sequence] = []
    stats = dict.fromkeys(["steps", "preempted", "finished", "aborted", "snapshots", "restored"], 0)

    def all_holders() -> list[CacheAllocation]:
        return holders(sched) + [a for a, _ in snaps]

    def step() -> None:
        running_before = {id(s) for s in sched.running}
        out = sched.schedule()
        check_step(sched, out, running_before)
        cache.check(all_holders())
        if not out.scheduled and sched.waiting and not sched.running and snaps:
            cache.free(snaps.pop(0)[0])  # as the engine does: snapshots give way to requests
            return
        assert out.scheduled or not sched.has_unfinished(), "no progress"
        stats["steps"] += 1
        stats["preempted"] += len(out.preempted)
        tok = EOS if rng.random() < 0.03 else rng.randrange(1, 100)
        for seq in advance(sched, out, tok):
            live.remove(seq)
            stats["finished"] += 1

    for _ in range(1000):
        op = rng.choices(
            ["add", "step", "abort", "finish", "snap", "drop", "restore"], [4, 8, 1, 1, 1, 1, 1]
        )[0]
        if op == "add" and len(live) < 12:
            seq = make_seq(rng.randint(1, 30), rng.randint(1, 20), priority=rng.randint(0, 2))
            sched.add(seq)
            live.append(seq)
        elif op == "step":
            step()
        elif op in ("abort", "finish") and live:
            pool = live if op == "abort" else sched.running or live
            seq = rng.choice(pool)
            sched.finish(seq)
            live.remove(seq)
            assert seq.status is SequenceStatus.FINISHED and seq.alloc.slot is None
            stats["aborted"] += 1
        elif op == "snap" and sched.running:
            seq = rng.choice(sched.running)
            snap = CacheAllocation()
            if seq.num_computed_tokens and cache.allocate_slot(snap):
                n = seq.num_computed_tokens
                snap.block_table = cache.share_blocks(seq.alloc.block_table[: cache.blocks_for(n)])
                snaps.append((snap, seq.token_range(0, n)))
                stats["snapshots"] += 1
        elif op == "drop" and snaps:
            cache.free(snaps.pop(rng.randrange(len(snaps)))[0])
        elif op == "restore" and snaps and len(live) < 12:
            snap, tokens = rng.choice(snaps)
            seq = make_seq(0, rng.randint(1, 10), priority=rng.randint(0, 2))
            seq.prompt_token_ids = tokens + [rng.randrange(1, 100) for _ in range(rng.randint(1, 8))]
            if len(seq.prompt_token_ids) <= 30 and cache.allocate_slot(seq.alloc):
                blocks = cache.share_blocks(snap.block_table)
                fresh = CacheAllocation()
                if len(tokens) % block_size and not cache.ensure_blocks(fresh, 1):
                    seq.alloc.block_table = blocks
                    cache.free(seq.alloc)
                else:
                    if fresh.block_table:  # copy-on-write of the partial last block
                        cache.free(CacheAllocation(block_table=[blocks[-1]]))
                        blocks[-1] = fresh.block_table[0]
                    seq.alloc.block_table = blocks
                    seq.num_computed_tokens = len(tokens)
                    sched.add(seq)
                    live.append(seq)
                    stats["restored"] += 1
        cache.check(all_holders())
        assert cache.num_used_slots == len([h for h in all_holders() if h.slot is not None])
    while sched.has_unfinished():
        step()
    assert not live
    while snaps:
        cache.free(snaps.pop()[0])
    cache.check([])
    assert cache.num_free_blocks == cache.num_blocks and cache.num_free_slots == cache.num_slots
    assert all(v >= 10 for v in stats.values()), stats


def test_waiting_queue_keeps_priority_then_arrival_under_random_adds_and_aborts() -> None:
    """3,000 random operations (add with priority 0..3, abort any waiting request, admit one):
    every admission is the first waiting request by (priority, arrival), and the queue's view and
    counts always equal a plain sorted list's. Preempted requests re-enter by their old arrival."""
    rng = random.Random(11)
    sched = make_scheduler(num_blocks=4096, num_slots=4, max_num_seqs=1, budget=1000)
    reference: list[Sequence] = []  # waiting, in no order
    for _ in range(3000):
        op = rng.choices(["add", "abort", "admit"], [5, 3, 2])[0]
        if op == "add":
            seq = make_seq(rng.randint(1, 8), max_tokens=1, priority=rng.randint(0, 3))
            if rng.random() < 0.1:
                seq.arrival -= rng.randint(1, 1000)  # as a preempted request comes back
            sched.add(seq)
            reference.append(seq)
        elif op == "abort" and reference:
            seq = reference.pop(rng.randrange(len(reference)))
            sched.finish(seq)
            assert seq.status is SequenceStatus.FINISHED
        elif op == "admit":
            out = sched.schedule()
            expected = min(reference, key=lambda s: (s.priority, s.arrival), default=None)
            assert [s.seq for s in out.scheduled] == ([expected] if expected is not None else [])
            if expected is not None:
                reference.remove(expected)
                sched.finish(expected)
        assert sched.waiting == sorted(reference, key=lambda s: (s.priority, s.arrival))
        assert sched.num_waiting == len(reference) and sched.num_running == 0
        assert sched.has_unfinished() == bool(reference)
    sched.cache.check(holders(sched))


def test_aborted_waiting_requests_are_not_kept_alive() -> None:
    """Aborting leaves no reference to the request behind (its tokens can be freed at once), for
    10,000 waiting requests aborted in a random order, and a later add and admission still work."""
    sched = make_scheduler(max_num_seqs=1)
    seqs = [make_seq(8) for _ in range(10_000)]
    for s in seqs:
        sched.add(s)
    refs = [weakref.ref(s) for s in seqs]
    order = list(range(len(seqs)))
    random.Random(3).shuffle(order)
    for i in order:
        sched.finish(seqs[i])
    del seqs, s
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
    assert sched.num_waiting == 0 and not sched.has_unfinished() and sched.waiting == []
    late = make_seq(4)
    sched.add(late)
    assert [s.seq for s in sched.schedule().scheduled] == [late]
    sched.cache.check(holders(sched))


def test_long_prefill_threshold_caps_each_prompt_per_step() -> None:
    """With long_prefill_token_threshold 10 and budget 64, two long prompts beside three decodes
    each take at most 10 tokens a step; the decodes still run every step, first."""
    sched = Scheduler(SchedulerConfig(16, 64, long_prefill_token_threshold=10), CacheManager(256, 4, 16))
    short = [make_seq(3, max_tokens=50) for _ in range(3)]
    for s in short:
        sched.add(s)
    advance(sched, sched.schedule())
    long = [make_seq(45, max_tokens=2), make_seq(30, max_tokens=2)]
    for s in long:
        sched.add(s)
    chunks: dict[int, list[int]] = {id(s): [] for s in long}
    for _ in range(5):
        running_before = {id(s) for s in sched.running}
        out = sched.schedule()
        check_step(sched, out, running_before)
        assert [(s.seq, s.num_tokens) for s in out.scheduled[:3]] == [(s, 1) for s in short]
        for item in out.scheduled[3:]:
            if item.seq.num_computed_tokens < len(item.seq.prompt_token_ids):  # a prompt chunk
                chunks[id(item.seq)].append(item.num_tokens)
        advance(sched, out)
    assert chunks == {id(long[0]): [10, 10, 10, 10, 5], id(long[1]): [10, 10, 10]}
