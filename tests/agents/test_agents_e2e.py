"""End to end on the real tiny runtime (random weights): constrained decoding makes every tool
call schema-valid, so each forced call validates and runs; structured final answers parse; many
agents share one engine through the scheduler; a model path loads one shared runtime."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from weather_tools import CALLS, Report, check_tool_steps, get_weather, make_agent

from jamba_runtime import LLM, EngineConfig
from jamba_stack.agents import Policy
from jamba_stack.agents.scheduler import AgentScheduler
from jamba_stack.chat import LocalChatModel
from jamba_stack.chat.local import AsyncLocalChatModel


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(tiny_model_dir, max_model_len=4096, engine=EngineConfig(cache_memory_gb=0.1))


def test_forced_tool_steps_are_valid_then_final(llm: LLM) -> None:
    CALLS.clear()
    result = make_agent(LocalChatModel(llm), policy=Policy(max_steps=5)).run("Weather in Oslo?")
    assert result.stop_reason == "final" and result.steps == 3
    assert isinstance(result.final_output, str)
    check_tool_steps(result)
    ran = sum(1 for e in result.trace if e.type == "tool_call" and e["name"] == "get_weather")
    assert len(CALLS) == ran
    llm_events = [e for e in result.trace if e.type == "llm"]
    assert [bool(e["tool_calls"]) for e in llm_events] == [True, True, False]
    assert all(e["prompt_tokens"] > 100 for e in llm_events)
    exported = json.loads(result.trace_json())
    assert {e["type"] for e in exported} == {"llm", "tool_call", "tool_result", "final"}


def test_output_type_is_schema_valid(llm: LLM) -> None:
    result = make_agent(LocalChatModel(llm), output_type=Report, policy=Policy(max_steps=4)).run(
        "Report on Lima"
    )
    assert result.stop_reason == "final" and isinstance(result.final_output, Report)
    assert [e["purpose"] for e in result.trace if e.type == "llm"][-1] == "output"
    check_tool_steps(result)


def test_scheduler_batches_agents_on_one_engine(llm: LLM) -> None:
    local = LocalChatModel(llm)
    agents = [make_agent(local, name=f"a{i}", policy=Policy(max_steps=4)) for i in range(4)]
    scheduler = AgentScheduler(max_concurrent_calls=4)
    results = scheduler.run([(a, f"Weather #{i}?") for i, a in enumerate(agents)])
    assert [r.agent for r in results] == ["a0", "a1", "a2", "a3"]
    for r in results:
        assert r.stop_reason == "final" and r.steps == 3
        check_tool_steps(r)
        assert all("queued_ms" in e.data for e in r.trace if e.type == "llm")
    assert scheduler.call_gate is not None and scheduler.call_gate.max_in_flight == 4
    assert sorted(scheduler.call_gate.admitted) == sorted([f"a{i}" for i in range(4)] * 3)
    # The adapter was closed: its snapshots are gone and the in-process model serves synchronous
    # calls again.
    assert not [k for k in llm.engine.snapshots if k.startswith("agent-ctx-")]
    assert local.chat([{"role": "user", "content": "hi"}], max_tokens=2).usage.completion_tokens >= 1


def test_fifo_gate_admits_in_arrival_order(llm: LLM) -> None:
    agents = [
        make_agent(LocalChatModel(llm), name=f"b{i}", tool_choice="required", policy=Policy(max_steps=2))
        for i in range(3)
    ]
    scheduler = AgentScheduler(max_concurrent_calls=1)
    scheduler.run([(a, "Weather?") for a in agents])
    admitted = scheduler.call_gate.admitted  # type: ignore[union-attr]
    assert admitted[:3] == ["b0", "b1", "b2"]  # first turns in arrival order; then each agent requeues
    assert len(admitted) == 6 and scheduler.call_gate.max_in_flight == 1  # type: ignore[union-attr]


def test_async_adapter_reuses_the_conversation_prefix(llm: LLM) -> None:
    adapter = AsyncLocalChatModel.from_llm(llm)
    agent = make_agent(adapter, tool_choice="required", policy=Policy(max_steps=3))
    try:
        result = asyncio.run(agent.arun("Weather in Paris?"))
        # Turns 2 and 3 extended the saved prompt of the turn before: only new messages prefilled.
        # (A turn under tool_choice="none" renders no tools, so its prompt extends none.)
        assert adapter.prefix_requests == 2 and adapter.engine.metrics().snapshots >= 1
    finally:
        adapter.close()
    assert result.stop_reason == "max_steps" and result.steps == 3
    check_tool_steps(result)


def test_async_adapter_keeps_one_snapshot_per_conversation(llm: LLM) -> None:
    """Each turn replaces the snapshot of the turn it extends, so two conversations of three turns
    hold two snapshots (not six, which would crowd the engine's state slots); `close` drops them."""
    engine = llm.engine
    before = set(engine.snapshots)
    adapter = AsyncLocalChatModel.from_llm(llm)
    agents = [
        make_agent(adapter, name=f"c{i}", tool_choice="required", policy=Policy(max_steps=3))
        for i in range(2)
    ]

    async def both() -> list:
        return await asyncio.gather(*(a.arun(f"Weather for trip #{i}?") for i, a in enumerate(agents)))

    try:
        results = asyncio.run(both())
        mine = [k for k in engine.snapshots if k.startswith(adapter.snapshot_prefix)]
        assert adapter.prefix_requests == 4 and len(mine) == 2
    finally:
        adapter.close()
    assert set(engine.snapshots) == before
    for r in results:
        assert r.stop_reason == "max_steps" and r.steps == 3
        check_tool_steps(r)


def test_async_adapter_chat_matches_local(llm: LLM) -> None:
    local = LocalChatModel(llm)
    messages = [{"role": "user", "content": "Weather?"}]
    options = {
        "tools": [get_weather.definition()],
        "tool_choice": "required",
        "max_tokens": 48,
        "temperature": 0.8,
        "seed": 3,
    }
    want = local.chat(messages, **options)
    adapter = AsyncLocalChatModel.from_llm(local.llm, reuse_prefix=False)
    try:
        got = adapter.chat(messages, **options)
    finally:
        adapter.close()
    assert [(c.name, c.arguments) for c in got.tool_calls] == [(c.name, c.arguments) for c in want.tool_calls]
    assert got.usage == want.usage and got.finish_reason == want.finish_reason == "tool_calls"


def test_model_as_path_shares_one_runtime(tiny_model_dir: Path) -> None:
    by_path = make_agent(str(tiny_model_dir), tool_choice="required", policy=Policy(max_steps=1))
    assert isinstance(by_path.model, LocalChatModel)
    assert make_agent(str(tiny_model_dir)).model is by_path.model  # one runtime per path
    result = by_path.run("Weather?")
    assert result.stop_reason == "max_steps"
    check_tool_steps(result)
