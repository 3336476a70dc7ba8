"""Long-term memory in a real embedded Chroma collection with the real embedder: facts survive a
reopen, are recalled by meaning, stay within their namespace, and work as an agent's tools."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted import ScriptedModel, calls

from jamba_stack.agents import Agent, AgentConfigError
from jamba_stack.agents.longterm import LongTermMemory


@pytest.fixture(scope="module")
def embedder():  # noqa: ANN201
    pytest.importorskip("sentence_transformers")
    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


def test_facts_persist_and_are_recalled_by_meaning(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    alice = LongTermMemory("agent-mem", data_dir=tmp_path, embedder=embedder, namespace="alice")
    a = alice.remember("Alice prefers window seats on planes.")
    alice.remember("Alice is allergic to peanuts.")
    assert alice.remember("Alice prefers window seats on planes.") == a  # idempotent
    LongTermMemory("agent-mem", data_dir=tmp_path, embedder=embedder, namespace="bob").remember(
        "Bob prefers aisle seats."
    )

    reopened = LongTermMemory("agent-mem", data_dir=tmp_path, embedder=embedder, namespace="alice")
    hits = reopened.recall("where does she like to sit when flying?", k=5)
    assert [h["text"] for h in hits][0] == "Alice prefers window seats on planes."
    assert len(hits) == 2 and all(h["metadata"]["namespace"] == "alice" for h in hits)
    assert reopened.collection.count() == 3
    reopened.forget(a)
    assert [h["text"] for h in reopened.recall("seats")] == ["Alice is allergic to peanuts."]
    with pytest.raises(AgentConfigError, match="empty"):
        reopened.remember("  ")


def test_memory_tools_in_an_agent(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    memory = LongTermMemory("agent-mem2", data_dir=tmp_path, embedder=embedder)
    model = ScriptedModel(
        [
            calls(("remember", {"fact": "The wifi password is on the fridge."})),
            "ok",
            calls(("recall", {"query": "wifi password", "k": 1})),
            "On the fridge.",
        ]
    )
    agent = Agent("helper", "", memory.tools(), model)
    agent.run("Remember where the wifi password is.")
    result = agent.run("Where is the wifi password?")
    recalled = [e["content"] for e in result.trace if e.type == "tool_result"][0]
    assert recalled == '["The wifi password is on the fridge."]'
