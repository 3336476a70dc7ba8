"""Tools and helpers shared by the end-to-end agent tests (tiny runtime, random weights)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from jamba_stack.agents import Agent, tool

CALLS: list[tuple[str, int]] = []


@tool
def get_weather(city: Literal["Paris", "Oslo", "Lima"], days: int = Field(1, ge=1, le=7)) -> str:
    """The weather forecast for a city.

    Args:
        city: the city.
        days: days ahead.
    """
    assert 1 <= days <= 7  # validated before the call: never fails
    CALLS.append((city, days))
    return f"{city}: sunny for {days} days"


@tool
def convert(celsius: float) -> float:
    """Celsius to Fahrenheit."""
    return celsius * 9 / 5 + 32


class Report(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]
    warm: bool
    note: str = Field(max_length=12)


def tools_then_answer(step: int) -> str:
    return "required" if step < 2 else "none"


def make_agent(model: object, name: str = "weather", **kw: object) -> Agent:
    kw.setdefault("tool_choice", tools_then_answer)
    return Agent(
        name=name,
        instructions="Use the tools, then answer.",
        tools=[get_weather, convert],
        model=model,  # type: ignore[arg-type]
        model_options={"max_tokens": 48, "temperature": 0.8, "seed": 7},
        **kw,  # type: ignore[arg-type]
    )


def check_tool_steps(result) -> None:  # noqa: ANN001
    """Every call the model made was valid and ran: no argument errors, no denials."""
    results = [e for e in result.trace if e.type == "tool_result"]
    assert results and all(e["error"] is None for e in results), [e["error"] for e in results]
    assert [e.type for e in result.trace].count("tool_call") == len(results) == result.tool_calls
    assert not [e for e in result.trace if e.type == "denied"]
