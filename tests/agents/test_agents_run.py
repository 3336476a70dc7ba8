"""The agent loop on a scripted model: tool errors go back to the model and it retries, parallel
calls really overlap, limits (steps, tokens, wall time, tool calls) end the run with a reason,
structured final answers, streaming, and the trace's JSON."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from pydantic import BaseModel
from scripted import ScriptedModel, calls

from jamba_stack.agents import Agent, AgentError, Policy, ToolError, load_trace, save_trace, tool
from jamba_stack.chat import ChatResponse, Usage


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    if key == "missing":
        raise ToolError("no such key: try 'color'")
    return {"color": "blue"}.get(key, "?")


def types(result) -> list[str]:  # noqa: ANN001
    return [e.type for e in result.trace]


def test_tool_error_retry_then_final() -> None:
    model = ScriptedModel(
        [calls(("divide", {"a": 1, "b": 0})), calls(("divide", {"a": 1, "b": 2})), "It is 0.5."]
    )
    result = Agent("math", "Be exact.", [divide], model).run("What is 1/2?")
    assert result.final_output == "It is 0.5." and result.stop_reason == "final"
    assert types(result) == [
        "llm",
        "tool_call",
        "tool_result",
        "llm",
        "tool_call",
        "tool_result",
        "llm",
        "final",
    ]
    first_error = result.trace[2]
    assert first_error["error"]["type"] == "ZeroDivisionError"
    # The model saw the error as a tool message answering its call, then its retry's result.
    sent = model.messages(1)
    assert sent[0] == {"role": "system", "content": "Be exact."} and sent[1]["content"] == "What is 1/2?"
    assert sent[2]["tool_calls"][0]["id"] == sent[3]["tool_call_id"] == first_error["call_id"]
    assert json.loads(sent[3]["content"])["error"]["type"] == "ZeroDivisionError"
    assert model.messages(2)[-1]["content"] == "0.5"
    assert result.steps == 3 and result.tool_calls == 2
    assert result.total_tokens == sum(
        e["prompt_tokens"] + e["completion_tokens"] for e in result.trace if e.type == "llm"
    )


def test_tool_error_message_and_bad_arguments_reach_the_model() -> None:
    model = ScriptedModel([calls(("lookup", {"key": "missing"}), ("lookup", {"k": 1})), "ok"])
    result = Agent("kv", "", [lookup], model).run("color?")
    errors = [e["error"] for e in result.trace if e.type == "tool_result"]
    assert errors[0] == {"type": "ToolError", "message": "no such key: try 'color'"}
    assert errors[1]["type"] == "invalid_arguments" and "key: Field required" in errors[1]["message"]
    assert result.final_output == "ok"


def test_parallel_calls_run_concurrently_and_answer_in_order() -> None:
    barrier = threading.Barrier(3, timeout=20)  # passes only if all three calls run at once

    @tool
    def wait_sync(i: int) -> int:
        """Wait for the others."""
        barrier.wait()
        return i

    both = asyncio.Event()
    seen: list[int] = []

    @tool
    async def wait_async(i: int) -> int:
        """Wait for the other async call."""
        seen.append(i)
        if len(seen) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 20)
        return i * 10

    script = [
        calls(("wait_sync", {"i": 1}), ("wait_sync", {"i": 2}), ("wait_sync", {"i": 3})),
        calls(("wait_async", {"i": 1}), ("wait_async", {"i": 2})),
        "done",
    ]
    model = ScriptedModel(script)
    result = Agent("par", "", [wait_sync, wait_async], model).run("go")
    assert result.final_output == "done"
    outs = [(e["content"], e["error"]) for e in result.trace if e.type == "tool_result"]
    assert outs == [("1", None), ("2", None), ("3", None), ("10", None), ("20", None)]
    tool_msgs = [m for m in model.messages(2) if m["role"] == "tool"]
    assert [m["content"] for m in tool_msgs] == ["1", "2", "3", "10", "20"]


def test_max_steps_stops_without_an_answer() -> None:
    model = ScriptedModel([calls(("lookup", {"key": "color"}))] * 5)
    result = Agent("loop", "", [lookup], model, policy=Policy(max_steps=3)).run("forever")
    assert result.stop_reason == "max_steps" and result.final_output is None
    assert types(result).count("llm") == 3 and len(model.script) == 2
    assert result.trace[-1].type == "final" and result.trace[-1]["stop_reason"] == "max_steps"


def test_timeout_in_a_tool_and_in_the_model() -> None:
    @tool
    async def hang() -> str:
        """Never returns."""
        await asyncio.Event().wait()
        return "never"

    result = Agent("t", "", [hang], ScriptedModel([calls(("hang", {}))]), policy=Policy(max_seconds=0.3)).run(
        "x"
    )
    assert result.stop_reason == "timeout" and result.final_output is None
    assert types(result) == ["llm", "tool_call", "final"]
    # The interrupted call still gets an answer in the conversation (and in memory).
    assert result.messages[-1]["tool_call_id"] == result.trace[1]["call_id"]
    assert json.loads(result.messages[-1]["content"])["error"]["type"] == "cancelled"
    slow = ScriptedModel(["late"], delay=1.0)
    result = Agent("t2", "", [], slow, policy=Policy(max_seconds=0.2)).run("x")
    assert result.stop_reason == "timeout" and types(result) == ["final"]


def test_token_budget_and_tool_call_limit() -> None:
    model = ScriptedModel([calls(("lookup", {"key": "color"}))] * 4)
    result = Agent("tok", "", [lookup], model, policy=Policy(max_tokens=60)).run("x")
    assert result.stop_reason == "max_tokens" and result.total_tokens >= 60
    assert model.requests[-1].max_tokens <= 60 - 25  # the turn was capped by what was left

    model = ScriptedModel([calls(*[("lookup", {"key": "color"})] * 3), "answer"])
    result = Agent("cap", "", [lookup], model, policy=Policy(max_tool_calls=2)).run("x")
    denied = [e for e in result.trace if e.type == "denied"]
    assert len(denied) == 1 and "tool-call limit" in denied[0]["reason"]
    assert [e["error"] is None for e in result.trace if e.type == "tool_result"] == [True, True, False]
    assert model.tool_names(0) == ["lookup"] and model.tool_names(1) == []  # no tools offered after
    assert result.final_output == "answer"


class Verdict(BaseModel):
    answer: str
    confidence: int


def test_output_type_parses_or_asks_for_json() -> None:
    model = ScriptedModel(
        [calls(("lookup", {"key": "color"})), "Blue, I think.", '{"answer": "blue", "confidence": 80}']
    )
    result = Agent("typed", "", [lookup], model, output_type=Verdict).run("color?")
    assert result.final_output == Verdict(answer="blue", confidence=80)
    last = model.requests[-1]
    assert last.inputs.response_format["json_schema"]["schema"]["required"] == ["answer", "confidence"]
    assert not last.inputs.uses_tools and model.messages(2)[-2]["content"] == "Blue, I think."
    assert [e["purpose"] for e in result.trace if e.type == "llm"] == ["turn", "turn", "output"]
    assert result.trace[-1]["output"] == {"answer": "blue", "confidence": 80}

    direct = ScriptedModel(['{"answer": "x", "confidence": 1}'])
    assert Agent("typed2", "", [], direct, output_type=Verdict).run("q").final_output.answer == "x"
    assert len(direct.requests) == 1


def test_stream_trace_json_and_save(tmp_path) -> None:  # noqa: ANN001
    agent = Agent("s", "", [lookup], ScriptedModel([calls(("lookup", {"key": "color"})), "blue"]))
    events = list(agent.stream("color?"))
    assert [e.type for e in events] == ["llm", "tool_call", "tool_result", "llm", "final"]
    result = events[-1].result
    assert result is not None and result.final_output == "blue"
    exported = json.loads(result.trace_json())
    assert [e["type"] for e in exported] == [e.type for e in events]
    assert all({"type", "agent", "step", "t"} <= set(e) for e in exported)
    assert exported[2]["content"] == "blue" and exported[1]["arguments"] == {"key": "color"}
    back = load_trace(save_trace(result.trace, tmp_path / "trace.json"))
    assert [e.to_json() for e in back] == exported


def test_tool_choice_per_step_and_run_inside_a_loop() -> None:
    model = ScriptedModel([calls(("lookup", {"key": "color"}))] * 2 + ["done"])
    choice = lambda step: "required" if step < 2 else "none"  # noqa: E731
    result = Agent("c", "", [lookup], model, tool_choice=choice, model_options={"temperature": 0}).run("x")
    assert [r.inputs.tool_choice for r in model.requests] == ["required", "required", None]
    assert model.tool_names(2) == [] and result.final_output == "done"
    assert all(r.temperature == 0 for r in model.requests)

    async def inside() -> None:
        Agent("c2", "", [], ScriptedModel(["x"])).run("x")

    with pytest.raises(AgentError, match="await agent.arun"):
        asyncio.run(inside())


def test_model_errors_raise() -> None:
    def boom(request) -> ChatResponse:  # noqa: ANN001
        raise RuntimeError("server down")

    with pytest.raises(RuntimeError, match="server down"):
        Agent("e", "", [], ScriptedModel([boom])).run("x")
    ok = ScriptedModel([lambda r: ChatResponse("fine", (), "stop", Usage(1, 1))])
    assert asyncio.run(Agent("e2", "", [], ok).arun("x")).final_output == "fine"
