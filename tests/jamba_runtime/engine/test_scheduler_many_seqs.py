"""Many sequences next to prefix snapshots, on the real tiny engine: the batch stays full.

Agents (agents.AsyncLocalChatModel) save a snapshot at the end of every turn's prompt. A
snapshot takes any free state slot, so it can sit in the slots the batch needs. The scheduler
admits no request without a slot, and the engine gives snapshots up only once nothing runs at
all, so the batch shrinks to the one sequence that finishing requests make room for. With 64
agents on an H100 this took 97 s for 256 agent turns, against 5 s for 128 turns with 32 agents.
Requests restored from a snapshot that wait behind the head of the queue hold slots too, and can
block the head in the same way.

Each test fails before the fix and passes after it; outputs are also checked against a fresh run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, EngineConfig, LLMEngine, SamplingParams
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.engine.sequence import Sequence

MAX_NUM_SEQS = 4
SNAPSHOT_SLOTS = 2


def params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 1024) for _ in range(length)] for _ in range(n)]


def drain(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()
        engine.check_cache()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def llm(tiny_model_dir: Path) -> LLM:
    """4 sequences, 2 snapshot slots (6 state slots), plenty of KV blocks and token budget: only
    state slots can keep a request waiting."""
    return LLM(
        model=tiny_model_dir,
        engine=EngineConfig(
            max_num_seqs=MAX_NUM_SEQS,
            num_snapshot_slots=SNAPSHOT_SLOTS,
            max_num_batched_tokens=1024,
            block_size=8,
            cache_memory_gb=0.02,
        ),
    )


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> LLM:
    """A roomy engine for expected outputs."""
    return LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=8, cache_memory_gb=0.02))


def test_snapshots_keep_to_their_slots(llm: LLM) -> None:
    engine = llm.engine
    assert engine.cache_manager.num_slots == MAX_NUM_SEQS + SNAPSHOT_SLOTS
    for i, prefix in enumerate(prompts(6, 12, seed=1)):
        llm.save_prefix(prefix, f"s{i}")
        engine.check_cache()
        assert len(engine.snapshots) <= SNAPSHOT_SLOTS, sorted(engine.snapshots)
    assert sorted(engine.snapshots) == ["s4", "s5"]  # the newest are kept
    assert engine.cache_manager.num_free_slots == MAX_NUM_SEQS


def test_waiting_requests_fill_the_batch_next_to_saved_snapshots(llm: LLM, reference: LLM) -> None:
    engine = llm.engine
    for i, prefix in enumerate(prompts(6, 12, seed=2)):
        llm.save_prefix(prefix, f"s{i}")
    batch = prompts(MAX_NUM_SEQS, 10, seed=3)
    seqs = [engine.add_request(p, params(8), request_id=f"r{i}") for i, p in enumerate(batch)]
    engine.step()
    engine.check_cache()
    # All four fit (max_num_seqs); before the fix the snapshots held every slot and one ran.
    assert [s.request_id for s in engine.scheduler.running] == ["r0", "r1", "r2", "r3"]
    drain(engine)
    assert [s.output_token_ids for s in seqs] == [o.token_ids for o in reference.generate(batch, params(8))]


def test_restored_requests_behind_the_head_give_up_their_slots(llm: LLM, reference: LLM) -> None:
    """max_num_seqs 2 here: a request restored from a snapshot takes the slot that a finishing
    one frees, while the request at the head of the queue has none."""
    engine = LLMEngine(
        llm.model,
        llm.tokenizer,
        EngineConfig(
            max_num_seqs=2,
            num_snapshot_slots=1,
            max_num_batched_tokens=1024,
            block_size=8,
            cache_memory_gb=0.02,
        ),
    )
    prefix, short, long, head = prompts(4, 12, seed=4)
    engine.add_request(prefix, params(1), request_id="save", save_snapshot="p")
    drain(engine)
    assert list(engine.snapshots) == ["p"] and engine.cache_manager.num_free_slots == 2
    engine.add_request(short, params(2), request_id="short")
    engine.add_request(long, params(12), request_id="long")
    head_seq = engine.add_request(head, params(4), request_id="head")  # waits: both slots run
    restored_prompt = prefix + [7, 8, 9]
    while "short" in engine.requests:
        engine.step()
        engine.check_cache()
    assert engine.cache_manager.num_free_slots == 1 and head_seq.alloc.slot is None
    restored = engine.add_request(restored_prompt, params(4), request_id="restored", prefix_snapshot="p")
    assert restored.num_computed_tokens == len(prefix)  # restored: it holds the free slot
    engine.step()
    engine.check_cache()
    # The head runs next to "long" (before the fix it waited for "long" to finish, 10 steps).
    assert [s.request_id for s in engine.scheduler.running] == ["long", "head"]
    drain(engine)
    want = reference.generate([head, restored_prompt], params(4))
    assert [head_seq.output_token_ids, restored.output_token_ids] == [o.token_ids for o in want]


def test_agent_like_turns_keep_the_batch_full(llm: LLM, reference: LLM) -> None:
    """Four conversations of three turns, as agents run them: each turn extends the previous
    one's prompt, restores its snapshot and saves its own; the next turn arrives one step after
    the previous one ends (its tool runs meanwhile), so other requests' snapshots are saved in
    between. Whenever a request waits, the batch must be full."""
    engine = llm.engine
    schedule = engine.scheduler.schedule
    batch_sizes: list[int] = []

    def spy() -> SchedulerOutput:
        plan = schedule()
        batch_sizes.append(len(plan.scheduled))
        waiting, running = len(engine.scheduler.waiting), len(engine.scheduler.running)
        free, kept = engine.cache_manager.num_free_slots, len(engine.snapshots)
        assert not waiting or running == MAX_NUM_SEQS, (
            f"{waiting} waiting while {running} run, {free} free slots, {kept} snapshots"
        )
        return plan

    engine.scheduler.schedule = spy  # type: ignore[method-assign]
    rng = random.Random(5)
    convs = [[rng.randrange(3, 1024) for _ in range(6 + 3 * c)] for c in range(MAX_NUM_SEQS)]
    history: list[list[list[int]]] = [[] for _ in convs]  # each conversation's turn prompts
    replies: list[list[list[int]]] = [[] for _ in convs]
    turns = [0] * len(convs)
    due: dict[int, int] = {c: 0 for c in range(len(convs))}  # conversation -> step its next turn arrives
    live: dict[int, Sequence] = {}
    step = 0
    while due or live:
        for c in [c for c, at in due.items() if at <= step]:
            del due[c]
            prompt = list(convs[c])
            history[c].append(prompt)
            prev = f"c{c}t{turns[c] - 1}" if turns[c] else None
            live[c] = engine.add_request(
                prompt,
                params(3 + c),
                request_id=f"c{c}t{turns[c]}",
                prefix_snapshot=prev if prev in engine.snapshots else None,
                save_snapshot=f"c{c}t{turns[c]}",
            )
        engine.step()
        engine.check_cache()
        step += 1
        for c, seq in list(live.items()):
            if seq.finished:
                del live[c]
                turns[c] += 1
                replies[c].append(seq.output_token_ids)
                # The reply and a tool result join the conversation.
                convs[c] += seq.output_token_ids + [rng.randrange(3, 1024) for _ in range(4)]
                if turns[c] < 3:
                    due[c] = step + 1
    assert turns == [3] * len(convs)
    assert max(batch_sizes) == MAX_NUM_SEQS
    # The replies are what a fresh engine gives for the same prompts.
    for c in range(len(convs)):
        outs = reference.generate(history[c], [params(3 + c)] * len(history[c]))
        assert [o.token_ids for o in outs] == replies[c]
