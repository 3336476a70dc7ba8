"""Agents: define an agent (instructions, tools, policy), run a goal, and watch its steps live
(model turns, tool calls with arguments, results, denials) up to the final answer; the trace
downloads as JSON. Built on the `agents` SDK (`Agent.stream`).

The last run (its steps, answer and trace) is kept in the session: the download button, like any
widget, reruns the page, and the run must still be there afterwards."""

from __future__ import annotations

from typing import Any

import streamlit as st

from jamba_stack.agents import Agent, Policy, TraceEvent
from jamba_stack.agents.builtin import calculator, search_tool
from jamba_stack.retrieval.search import open_retriever
from jamba_stack.ui import session
from jamba_stack.ui.documents import list_collections

DENIED_REASON = "denied by the policy set on the Agents page"
LAST_RUN_KEY = "ag_last_run"
TOOL_CHOICES = {
    "auto": "The model decides",
    "first": "A tool call on the first step, then the model decides",
}


def deny(arguments: dict[str, Any]) -> str:
    """A policy validator that refuses every call."""
    return DENIED_REASON


def render_event(event: TraceEvent) -> None:
    """One step event as the page shows it."""
    data = event.data
    if event.type == "llm":
        st.caption(
            f"Step {event.step}: model turn, {data.get('prompt_tokens', 0)} prompt + "
            f"{data.get('completion_tokens', 0)} completion tokens, {data.get('latency_ms', 0):.0f} ms, "
            f"finish {data.get('finish_reason')}"
        )
        if data.get("content"):
            st.text(str(data["content"]))
    elif event.type == "tool_call":
        st.markdown(f"**Tool call** `{data['name']}`")
        st.json(data.get("arguments", {}))
    elif event.type == "tool_result":
        if data.get("error"):
            st.markdown(f"**Tool error** `{data['name']}`: {data['error'].get('message', '')}")
        else:
            st.markdown(f"**Tool result** `{data['name']}`")
            st.code(str(data.get("content", "")), language="json")
    elif event.type == "denied":
        st.warning(f"Denied `{data['name']}`: {data.get('reason', '')}")
    elif event.type == "final":
        st.markdown(
            f"**Finished** ({data.get('stop_reason')}) after {data.get('steps')} steps and "
            f"{data.get('tool_calls')} tool calls"
        )


def render_last_run(run: dict[str, Any]) -> None:
    """The kept run: its steps (unless this script run just drew them live), the final answer and
    the trace download."""
    if not run.pop("live", False):
        with st.status(f"{run['agent']} finished: {run['goal']}", state="complete", expanded=True):
            for event in run["events"]:
                render_event(event)
    result = run["result"]
    if result is None:
        return
    st.subheader("Final answer")
    if result.final_output is None:
        st.info(f"No answer: the run stopped at a limit ({result.stop_reason}).")
    elif not str(result.final_output).strip():
        st.info("The model's final answer was empty.")
    else:
        st.markdown(str(result.final_output))
    st.download_button(
        "Download trace (JSON)",
        result.trace_json(indent=2),
        file_name=f"{run['agent']}-trace.json",
        mime="application/json",
        key="ag_trace",
        on_click="ignore",  # a download changes nothing on the page
    )


settings = session.settings()
st.title("Agents")
session.random_model_notice(settings)

names: list[str] = []
with session.shows_errors("list the collections"):
    names = [c.name for c in list_collections(settings)]

name = st.text_input("Name", value="assistant", key="ag_name")
instructions = st.text_area(
    "Instructions",
    value="You answer with the tools: calculate with the calculator, look facts up with search.",
    height=80,
    key="ag_instructions",
)
tool_names = ["calculator"] + (["search"] if names else [])
chosen = st.multiselect("Tools", tool_names, default=["calculator"], key="ag_tools")
collection = st.selectbox("Collection for search", names, key="ag_collection") if "search" in chosen else None
cols = st.columns(3)
denied = cols[0].multiselect("Deny (policy)", chosen, key="ag_deny", help="Calls of these tools are refused.")
max_steps = cols[1].number_input("Max steps", min_value=1, max_value=20, value=3, key="ag_steps")
max_tokens = cols[2].number_input("Max tokens per turn", min_value=16, max_value=2048, value=64, key="ag_max")
choice = st.radio(
    "Tool choice", list(TOOL_CHOICES), format_func=TOOL_CHOICES.__getitem__, horizontal=True, key="ag_choice"
)
goal = st.text_input("Goal", value="What is 17 * 3 + 2?", key="ag_goal")

if st.button("Run", type="primary", key="ag_run"):
    with session.shows_errors("run the agent"):
        tools: list[Any] = []
        if "calculator" in chosen:
            tools.append(calculator)
        if "search" in chosen and collection:
            retriever = open_retriever(
                collection,
                data_dir=settings.data_dir,
                chroma_url=settings.chroma_url,
                embedder=session.embedder(settings),
            )
            tools.append(search_tool(retriever, k=3))
        agent = Agent(
            name=name.strip() or "assistant",
            instructions=instructions,
            tools=tools,
            model=session.chat_model(settings),
            policy=Policy(
                max_steps=int(max_steps), validators={t.name: deny for t in tools if t.name in denied}
            ),
            tool_choice=(lambda step: "required" if step == 0 else "auto")
            if choice == "first" and tools
            else "auto",
            model_options={"max_tokens": int(max_tokens), "temperature": 0.0},
        )
        events: list[TraceEvent] = []
        with st.status(f"Running {agent.name}...", expanded=True) as status:
            for event in agent.stream(goal):
                render_event(event)
                events.append(event)
            status.update(label=f"{agent.name} finished: {goal}", state="complete")
        final = next((e for e in reversed(events) if e.type == "final" and e.result is not None), None)
        st.session_state[LAST_RUN_KEY] = {
            "agent": agent.name,
            "goal": goal,
            "events": events,
            "result": final.result if final is not None else None,
            "live": True,  # drawn by this script run already
        }


if last := st.session_state.get(LAST_RUN_KEY):
    render_last_run(last)
