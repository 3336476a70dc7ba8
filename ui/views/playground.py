"""Playground: structured output by hand. JSON mode with a schema editor, or tool definitions;
shows the raw output and what it parses to (grammar-constrained by the runtime, so it parses)."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from jamba_stack.ui import session
from jamba_stack.ui.errors import EmptyPromptError, InvalidJSONInputError

DEFAULT_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["title", "year", "tags"],
    "additionalProperties": False,
}
DEFAULT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    }
]
MODES = ("JSON schema", "JSON object", "Tools")


def parse_json_input(text: str, what: str) -> Any:
    """The JSON typed into an editor; raises `InvalidJSONInputError` naming the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJSONInputError(
            f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): fix it "
            "and run again"
        ) from None


def options_for(mode: str, schema_text: str, tools_text: str, tool_choice: str) -> dict[str, Any]:
    """The chat options of a playground run. Raises `InvalidJSONInputError`."""
    if mode == "JSON schema":
        schema = parse_json_input(schema_text, "schema")
        if not isinstance(schema, dict):
            raise InvalidJSONInputError('the schema must be a JSON object, such as {"type": "object"}')
        return {"json_schema": schema}
    if mode == "JSON object":
        return {"json_mode": True}
    tools = parse_json_input(tools_text, "tool list")
    if not isinstance(tools, list) or not tools:
        raise InvalidJSONInputError("the tools must be a non-empty JSON list of OpenAI tool definitions")
    return {"tools": tools, "tool_choice": tool_choice}


settings = session.settings()
st.title("Playground")
session.random_model_notice(settings)

mode = st.radio("Output", MODES, horizontal=True, key="pg_mode")
system = st.text_input("System message", value="You are a helpful assistant.", key="pg_system")
prompt = st.text_area("Prompt", value="Describe a film you like.", height=80, key="pg_prompt")
schema_text = tools_text = ""
tool_choice = "required"
if mode == "JSON schema":
    schema_text = st.text_area(
        "JSON schema", value=json.dumps(DEFAULT_SCHEMA, indent=2), height=260, key="pg_schema"
    )
elif mode == "Tools":
    tools_text = st.text_area(
        "Tool definitions (OpenAI format)",
        value=json.dumps(DEFAULT_TOOLS, indent=2),
        height=300,
        key="pg_tools",
    )
    tool_choice = st.selectbox("Tool choice", ["required", "auto", "none"], key="pg_tool_choice")
cols = st.columns(3)
max_tokens = cols[0].number_input("Max tokens", min_value=8, max_value=4096, value=256, key="pg_max")
temperature = cols[1].slider("Temperature", 0.0, 2.0, 0.0, 0.1, key="pg_temp")
seed = cols[2].number_input("Seed", min_value=0, value=0, key="pg_seed")

if st.button("Run", type="primary", key="pg_run"):
    with session.shows_errors("run the prompt"):
        if not prompt.strip():
            raise EmptyPromptError("the prompt is empty: type what the model should answer")
        options = options_for(mode, schema_text, tools_text, tool_choice)
        messages = [{"role": "user", "content": prompt}]
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
        model = session.chat_model(settings)
        with st.spinner("Generating..."):
            reply = model.chat(
                messages,
                max_tokens=int(max_tokens),
                temperature=float(temperature),
                seed=int(seed),
                **options,
            )
        left, right = st.columns(2)
        with left:
            st.markdown("**Raw output**")
            if reply.content:
                st.code(reply.content, language="json", wrap_lines=True)  # one long JSON line otherwise
            else:
                st.caption("The model returned no text.")
            st.caption(
                f"finish_reason: {reply.finish_reason} \u00b7 {reply.usage.prompt_tokens} prompt + "
                f"{reply.usage.completion_tokens} completion tokens"
            )
        with right:
            st.markdown("**Parsed**")
            if reply.tool_calls:
                st.json([{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls])
            elif mode != "Tools":
                st.json(reply.json())  # InvalidRequestError when max_tokens cut it off
            else:
                st.caption("The model answered in text, without calling a tool.")
