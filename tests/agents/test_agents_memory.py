"""Conversation memory: later runs see earlier ones, the token budget drops the oldest units
(never a tool result without its call, never the goal), sessions save and resume."""

from __future__ import annotations

import pytest
from scripted import ScriptedModel, calls

from jamba_stack.agents import Agent, AgentConfigError, ConversationMemory, tool
from jamba_stack.agents.memory import fit_messages, units


@tool
def note(text: str) -> str:
    """Write a note."""
    return "noted: " + text


def count_words(text: str) -> int:
    return len(text.split())


def test_memory_carries_runs_and_resumes(tmp_path) -> None:  # noqa: ANN001
    memory = ConversationMemory(max_tokens=10_000)
    model = ScriptedModel([calls(("note", {"text": "milk"})), "Noted milk.", "You asked about milk."])
    agent = Agent("m", "Remember things.", [note], model, memory=memory)
    agent.run("Remember milk")
    assert [m["role"] for m in memory.messages] == ["user", "assistant", "tool", "assistant"]
    path = memory.save(tmp_path / "session.json")

    resumed = ConversationMemory.load(path)
    assert resumed.session_id == memory.session_id and resumed.messages == memory.messages
    agent2 = Agent("m", "Remember things.", [note], model, memory=resumed)
    result = agent2.run("What did I ask?")
    assert result.final_output == "You asked about milk."
    assert [m["content"] for m in result.messages][1:] == [m["content"] for m in resumed.messages]
    sent = model.messages(2)
    assert sent[0]["role"] == "system" and sent[1]["content"] == "Remember milk"
    assert sent[-1]["content"] == "What did I ask?" and len(resumed.messages) == 6
    with pytest.raises(AgentConfigError, match="no session file"):
        ConversationMemory.load(tmp_path / "nope.json")


def test_budget_drops_oldest_units_and_keeps_pairs() -> None:
    msgs = [
        {"role": "user", "content": "one two three four"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a"}]},
        {"role": "tool", "tool_call_id": "a", "content": "x " * 20},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "goal here"},
        {"role": "assistant", "content": "step"},
    ]
    assert units(msgs) == [[0], [1, 2], [3], [4], [5]]
    cut = fit_messages(msgs, budget=25, count=count_words, keep=4)
    # the tool pair (the biggest, oldest) goes with its call; the goal stays
    assert [m["content"] for m in cut] == ["ok", "goal here", "step"]
    assert all(m["role"] != "tool" for m in cut)
    everything = fit_messages(msgs, budget=10_000, count=count_words)
    assert everything == msgs
    tiny = fit_messages(msgs, budget=1, count=count_words, keep=4)
    assert [m["content"] for m in tiny] == ["goal here", "step"]  # over budget, but never empty


def test_memory_window_in_a_run_respects_the_budget() -> None:
    memory = ConversationMemory(max_tokens=40, count_tokens=count_words)
    memory.add([{"role": "user", "content": "old " * 30}, {"role": "assistant", "content": "reply " * 40}])
    model = ScriptedModel(["fresh"])
    Agent("w", "sys", [], model, memory=memory).run("new question")
    assert [m["content"] for m in model.messages(0)] == ["sys", "new question"]
    with pytest.raises(AgentConfigError, match="max_tokens=0"):
        ConversationMemory(max_tokens=0)
