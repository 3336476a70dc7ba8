"""Constrained decoding on the tiny random model: every structured output parses and validates,
whatever the (random) weights want to write.

The schema suite is tests/data/schemas/*.json (one schema a file); every generation is checked
with jsonschema, formats included. Budget closing (grammar_closing) is what lets a random model
finish a JSON value within max_tokens, so outputs end with finish_reason "stop".
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from jamba_runtime import LLM, AsyncLLM, EngineConfig, SamplingParams, StructuredOutput, parse_tool_calls
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.structured.json_schema import MAX_SAFE_INTEGER, narrow_schema
from jamba_runtime.structured.masks import apply_token_bitmask, unpack_bitmask
from jamba_runtime.structured.tools import tool_parameters

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "data" / "schemas"
SUITE = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SCHEMA_DIR.glob("*.json"))}
SAMPLES_PER_SCHEMA = 4

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 10},
            },
            "required": ["query"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now", "description": "the time; takes no arguments"}}
TOOLS = (WEATHER, SEARCH, NOW)


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def params(spec: StructuredOutput, seed: int, max_tokens: int = 48, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, structured=spec, **kw)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=64, max_num_batched_tokens=1024))


def assert_clean(llm: LLM) -> None:
    llm.engine.check_cache()
    m = llm.engine.metrics()
    assert (m.running, m.waiting) == (0, 0) and not llm.engine.requests


def check_calls(text: str, tools: tuple[dict, ...], allowed: set[str] | None = None) -> list[dict]:
    """Parse a tool-call output and validate every call against its tool's parameters."""
    _, calls = parse_tool_calls(text)
    by_name = {t["function"]["name"]: t for t in tools}
    for call in calls:
        assert call["name"] in (allowed or by_name), call
        validator(tool_parameters(by_name[call["name"]])).validate(call["arguments"])
    return calls


# ---- the schema suite ------------------------------------------------------------------------------
def test_suite_has_the_schemas_the_issue_asks_for() -> None:
    assert len(SUITE) >= 40
    text = json.dumps(SUITE)
    for keyword in (
        "minItems",
        "maxItems",
        "enum",
        "anyOf",
        "oneOf",
        "$defs",
        "$ref",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "required",
        '"additionalProperties": false',
        '"additionalProperties": true',
        "prefixItems",
        "allOf",
        "patternProperties",
        "multipleOf",
    ):
        assert keyword in text, keyword
    assert any(s.get("properties", {}).get("address", {}).get("type") == "object" for s in SUITE.values())


def test_suite_generations_all_parse_and_validate(llm: LLM) -> None:
    names, prompts, plist = [], [], []
    for i, (name, schema) in enumerate(SUITE.items()):
        spec = StructuredOutput(json_schema=schema)
        for k in range(SAMPLES_PER_SCHEMA):
            names.append(name)
            # Short prompts: a step that admits a request runs the Mamba scan over its whole
            # prompt for every row of the batch, so long prompts would dominate this test's time.
            prompts.append(f"JSON {k}:")
            plist.append(params(spec, seed=100 * i + k, max_tokens=128))
    outs = llm.generate(prompts, plist)
    assert len(outs) >= 200
    failures = []
    for name, out in zip(names, outs, strict=True):
        try:
            assert out.finish_reason == "stop", out.finish_reason
            validator(SUITE[name]).validate(json.loads(out.text))
        except (AssertionError, json.JSONDecodeError, jsonschema.ValidationError) as e:
            failures.append(f"{name}: {e!s:.200} in {out.text[:200]!r}")
    assert not failures, "\n".join(failures)
    assert_clean(llm)


def test_json_object(llm: LLM) -> None:
    spec = StructuredOutput(json_object=True)
    outs = llm.generate(["Answer in JSON."] * 8, [params(spec, seed=s) for s in range(8)])
    for out in outs:
        assert out.finish_reason == "stop"
        assert isinstance(json.loads(out.text), dict)


@pytest.mark.parametrize(
    "pattern",
    [
        r"[a-z]{3}-\d{2,4}",
        r"(yes|no|maybe)",
        r"[A-Z][a-z]+ [0-9]+",
        r"[a-z]+@[a-z]+\.(com|org)",
        r"ab+c",
        r"\d{4}-\d{2}-\d{2}\s\w+",  # \d, \w, \s as Python's re reads them
    ],
)
def test_regex(llm: LLM, pattern: str) -> None:
    spec = StructuredOutput(regex=pattern)
    outs = llm.generate(["Hello"] * 4, [params(spec, seed=s, max_tokens=32) for s in range(4)])
    for out in outs:
        assert out.finish_reason == "stop"
        assert re.fullmatch(pattern, out.text), out.text


def test_choice(llm: LLM) -> None:
    choices = ("positive", "negative", "neutral ☺", "N/A")
    spec = StructuredOutput(choice=list(choices))
    assert spec.choice == choices  # lists are stored as tuples
    outs = llm.generate(["Sentiment?"] * 12, [params(spec, seed=s) for s in range(12)])
    assert all(o.text in choices and o.finish_reason == "stop" for o in outs)
    assert len({o.text for o in outs}) > 1


def test_greedy_structured(llm: LLM) -> None:
    spec = StructuredOutput(json_schema=SUITE["person"])
    a, b = llm.generate(["Who?", "Who?"], SamplingParams(max_tokens=64, temperature=0, structured=spec))
    assert a.text == b.text and a.finish_reason == "stop"
    validator(SUITE["person"]).validate(json.loads(a.text))


# ---- tools -------------------------------------------------------------------------------------------
def test_tools_required(llm: LLM) -> None:
    spec = StructuredOutput(tools=TOOLS, tool_choice="required")
    outs = llm.generate(
        ["What is the weather?"] * 12, [params(spec, seed=s, max_tokens=128) for s in range(12)]
    )
    counts = []
    for out in outs:
        assert out.finish_reason == "stop"
        assert out.text.startswith("<tool_calls>[") and out.text.endswith("]</tool_calls>"), out.text
        content, _ = parse_tool_calls(out.text)
        assert content == ""
        calls = check_calls(out.text, TOOLS)
        assert calls
        counts.append(len(calls))
    assert max(counts) >= 2, "some outputs should hold parallel calls"


def test_tools_without_parallel_calls_make_one_call(llm: LLM) -> None:
    spec = StructuredOutput(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    outs = llm.generate(["Weather?"] * 8, [params(spec, seed=s, max_tokens=64) for s in range(8)])
    assert all(len(check_calls(o.text, TOOLS)) == 1 and o.finish_reason == "stop" for o in outs)


def test_tools_named(llm: LLM) -> None:
    spec = StructuredOutput(
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    outs = llm.generate(["Weather in Paris?"] * 6, [params(spec, seed=s, max_tokens=128) for s in range(6)])
    for out in outs:
        assert out.finish_reason == "stop"
        calls = check_calls(out.text, TOOLS, allowed={"get_weather"})
        assert calls and all(c["name"] == "get_weather" for c in calls)


def test_tool_without_parameters_gets_empty_arguments(llm: LLM) -> None:
    spec = StructuredOutput(tools=(NOW,), tool_choice="required")
    out = llm.generate("Time?", params(spec, seed=0))[0]
    calls = check_calls(out.text, (NOW,))
    assert all(c == {"name": "now", "arguments": {}} for c in calls)


def _bias_token(llm: LLM, token_id: int, at_output_len: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the model strongly prefer `token_id` from its output token number `at_output_len` on
    until it has emitted it (as a model trained to call tools would): the grammar still decides
    what is allowed (e.g. not inside an unfinished UTF-8 character)."""
    runner = llm.engine.runner
    execute = runner.execute

    def biased(step):  # noqa: ANN001, ANN202
        to_sample, logits = execute(step)
        logits = logits.clone()
        for row, seq in enumerate(to_sample):
            if len(seq.output_token_ids) >= at_output_len and token_id not in seq.output_token_ids:
                logits[row, token_id] += 1000.0
        return to_sample, logits

    monkeypatch.setattr(runner, "execute", biased)


def test_tools_auto_when_the_model_calls(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = llm.tokenizer.token_to_id("<tool_calls>")
    _bias_token(llm, tag, at_output_len=3, monkeypatch=monkeypatch)
    spec = StructuredOutput(tools=TOOLS, tool_choice="auto")
    outs = llm.generate(
        ["Weather?"] * 6, [params(spec, seed=s, max_tokens=128, stop=["}"]) for s in range(6)]
    )
    for out in outs:
        assert out.finish_reason == "stop"
        content, calls = parse_tool_calls(out.text)
        assert "}" not in content  # the stop string applies to the text, and not to the block
        assert calls and out.text.endswith("</tool_calls>")
        check_calls(out.text, TOOLS)
        assert tag in out.token_ids


def test_tools_auto_when_the_model_answers_in_text(llm: LLM) -> None:
    tag = llm.tokenizer.token_to_id("<tool_calls>")
    spec = StructuredOutput(tools=TOOLS, tool_choice="auto")
    outs = llm.generate(["Hi"] * 6, [params(spec, seed=s, max_tokens=24) for s in range(6)])
    for out in outs:
        content, calls = parse_tool_calls(out.text)
        if tag in out.token_ids:
            check_calls(out.text, TOOLS)
        else:
            assert calls == [] and content == out.text.strip()
            # free text holds no special token (the grammar's text cannot)
            assert not set(out.token_ids) & set(range(20)) - set(llm.eos_token_ids)


def test_tools_none_never_opens_a_block(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = llm.tokenizer.token_to_id("<tool_calls>")
    _bias_token(llm, tag, at_output_len=2, monkeypatch=monkeypatch)
    spec = StructuredOutput(tools=TOOLS, tool_choice="none")
    for out in llm.generate(["Hi"] * 4, [params(spec, seed=s, max_tokens=16) for s in range(4)]):
        assert tag not in out.token_ids and "<tool_calls>" not in out.text


def test_tool_block_is_not_opened_without_budget_to_close_it(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = llm.tokenizer.token_to_id("<tool_calls>")
    _bias_token(llm, tag, at_output_len=5, monkeypatch=monkeypatch)
    spec = StructuredOutput(tools=TOOLS, tool_choice="auto")
    out = llm.generate("Weather?", params(spec, seed=0, max_tokens=8))[0]
    assert tag not in out.token_ids and out.finish_reason in ("stop", "length")


# ---- budget, stops, batching -------------------------------------------------------------------------
@pytest.mark.parametrize("max_tokens", [36, 44, 56])
def test_small_budgets_still_close(llm: LLM, max_tokens: int) -> None:
    schema = SUITE["nested_address"]
    spec = StructuredOutput(json_schema=schema)
    outs = llm.generate(["x"] * 4, [params(spec, seed=s, max_tokens=max_tokens) for s in range(4)])
    for out in outs:
        assert out.finish_reason == "stop" and len(out.token_ids) <= max_tokens
        validator(schema).validate(json.loads(out.text))


def test_budget_too_small_for_any_completion_ends_with_length(llm: LLM) -> None:
    spec = StructuredOutput(json_schema=SUITE["many_required_fields"])
    out = llm.generate("x", params(spec, seed=0, max_tokens=5))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_stop_strings_do_not_cut_structured_output(llm: LLM) -> None:
    spec = StructuredOutput(json_schema=SUITE["nested_address"])
    outs = llm.generate(
        ["x"] * 4, [params(spec, seed=s, stop=["}", '"', ":"], stop_token_ids=[30, 31]) for s in range(4)]
    )
    for out in outs:
        validator(SUITE["nested_address"]).validate(json.loads(out.text))


def test_unconstrained_rows_are_untouched(llm: LLM) -> None:
    plain = SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    alone = llm.generate(["The cat"], plain)[0]
    spec = StructuredOutput(json_schema=SUITE["person"])
    mixed = llm.generate(["The cat", "A", "B"], [plain, params(spec, seed=1), params(spec, seed=2)])
    assert mixed[0].token_ids == alone.token_ids and mixed[0].text == alone.text


def test_preemption_and_chunked_prefill_keep_outputs_valid(llm: LLM, tiny_model_dir: Path) -> None:
    # A cache of 12 KV blocks forces preemption (recompute: the matcher keeps its state); a small
    # token budget splits the long prompts into chunks.
    tight = LLM(
        model=tiny_model_dir,
        engine=EngineConfig(
            max_num_seqs=8, max_num_batched_tokens=48, block_size=16, cache_memory_gb=_tight_gb(llm)
        ),
    )
    schema = SUITE["entity_extraction"]
    spec = StructuredOutput(json_schema=schema)
    prompts = ["word " * (24 + 6 * i) for i in range(8)]
    outs = tight.generate(prompts, [params(spec, seed=s, max_tokens=32) for s in range(8)])
    assert tight.engine.metrics().preemptions_total > 0
    for out in outs:
        assert out.finish_reason == "stop"
        validator(schema).validate(json.loads(out.text))
    assert_clean(tight)


def _tight_gb(llm: LLM) -> float:
    """Room for 8 state slots + 4 snapshot slots and 12 KV blocks of 16 tokens."""
    from jamba_runtime.cache.paged import block_bytes, slot_bytes

    cfg = llm.model.config
    slots = 8 + 4
    return (slots * slot_bytes(cfg, llm.model.dtype) + 12.5 * block_bytes(cfg, 16, llm.model.dtype)) / (
        1 << 30
    )


def test_abort_mid_structured_output_frees_everything(llm: LLM) -> None:
    spec = StructuredOutput(json_schema=SUITE["plain_object"])
    seq = llm.engine.add_request("Hello", params(spec, seed=0, max_tokens=200), request_id="s-abort")
    for _ in range(3):
        llm.engine.step()
    llm.engine.abort("s-abort")
    assert seq.finish_reason == "abort"
    assert_clean(llm)


def test_matcher_rebuild_replays_the_output(llm: LLM) -> None:
    spec = StructuredOutput(json_schema=SUITE["defs_ref"])
    out = llm.generate("p", params(spec, seed=3))[0]
    g = llm.engine.grammars
    a, b = g.matcher(spec), g.matcher(spec)
    tokens = out.token_ids[: len(out.token_ids) // 2]
    assert all(a.accept(t) for t in tokens)
    assert b.rebuild(tokens)
    ma, mb = g.allocate_bitmask(1), g.allocate_bitmask(1)
    a.fill_bitmask(ma, 0)
    b.fill_bitmask(mb, 0)
    assert torch.equal(ma, mb)


def test_async_llm_structured(tiny_model_dir: Path) -> None:
    async def main() -> str:
        async with AsyncLLM(model=tiny_model_dir) as allm:
            spec = StructuredOutput(json_schema=SUITE["enum_string"])
            out = await allm.generate("Pick", params(spec, seed=0))
            return out.text

    validator(SUITE["enum_string"]).validate(json.loads(asyncio.run(main())))


def test_schemas_are_narrowed_to_values_validators_take() -> None:
    big = MAX_SAFE_INTEGER
    narrowed = narrow_schema(
        {
            "type": "object",
            "properties": {
                "n": {"type": "number"},
                "i": {"type": ["integer", "null"], "minimum": 5},
                "x": {"type": "number", "exclusiveMaximum": 1e30},
                "s": {"type": "string"},
                "t": {"type": "string", "format": "date-time"},
                "h": {"type": "string", "format": "hostname", "maxLength": 9},
            },
        }
    )
    p = narrowed["properties"]
    assert (p["n"]["minimum"], p["n"]["maximum"]) == (-big, big)
    assert (p["i"]["minimum"], p["i"]["maximum"]) == (5, big)
    assert "maximum" not in p["x"] and p["x"]["minimum"] == -big  # the caller's own bound is kept
    assert p["s"] == {"type": "string"}
    assert "format" not in p["t"] and re.fullmatch(p["t"]["pattern"][1:-1], "2024-01-31T23:59:59.5+02:00")
    assert not re.fullmatch(p["t"]["pattern"][1:-1], "2023-02-29T00:00:60Z")
    assert p["h"]["maxLength"] == 9 and re.fullmatch(p["h"]["pattern"][1:-1], "a-1.example.com")


def test_json_object_numbers_stay_finite(llm: LLM) -> None:
    def numbers(v: object) -> list[float]:
        if isinstance(v, dict):
            return [n for x in v.values() for n in numbers(x)]
        if isinstance(v, list):
            return [n for x in v for n in numbers(x)]
        return [v] if isinstance(v, int | float) and not isinstance(v, bool) else []

    spec = StructuredOutput(json_object=True)
    for out in llm.generate(["{"] * 8, [params(spec, seed=50 + s, max_tokens=96) for s in range(8)]):
        assert all(abs(n) <= MAX_SAFE_INTEGER for n in numbers(json.loads(out.text)))


# ---- compile cache --------------------------------------------------------------------------------
def test_grammars_compile_once_per_spec(llm: LLM) -> None:
    g = llm.engine.grammars
    s1 = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    s2 = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    c1 = g.compile(StructuredOutput(json_schema=s1))
    assert g.compile(StructuredOutput(json_schema=json.loads(json.dumps(s1)))) is c1
    assert g.compile(StructuredOutput(json_schema=s2)) is not c1  # property order is part of the spec
    assert hash(StructuredOutput(json_schema=s1)) == hash(StructuredOutput(json_schema=s1))


def test_spec_is_deep_copied(llm: LLM) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = StructuredOutput(json_schema=schema)
    schema["properties"]["a"]["type"] = "string"
    assert spec.json_schema == {"type": "object", "properties": {"a": {"type": "integer"}}}


# ---- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "items": {"type": "object"}, "uniqueItems": True}, "uniqueItems"),
        (
            {
                "type": "array",
                "items": {"type": "integer"},
                "uniqueItems": True,
                "contains": {"type": "integer"},
            },
            "contains",
        ),
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "'if'"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"not": {"type": "string"}}, "'not'"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties"),
        ({"type": "string", "format": "iri-reference"}, "iri-reference"),
        ({"type": "string", "pattern": "^(?=a)a+$"}, "look-around"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        ({"type": "array", "items": [{"type": "integer"}]}, "'items'"),
        ({"type": "number", "minimum": 0, "exclusiveMinimum": True}, "exclusiveMinimum"),
        ({"type": "object", "minProperties": 1, "properties": {"a": {"type": "integer"}}}, "minProperties"),
        ({"$ref": "https://example.com/schema.json"}, "example.com"),
    ],
)
def test_unsupported_schema_is_refused_when_added(llm: LLM, schema: dict, named: str) -> None:
    spec = StructuredOutput(json_schema=schema)
    with pytest.raises(InvalidRequestError, match=re.escape(named)) as err:
        llm.generate("x", params(spec, seed=0))
    assert err.value.http_status == 400
    with pytest.raises(InvalidRequestError, match=re.escape(named)):
        llm.engine.check_structured(spec)
    with pytest.raises(InvalidRequestError):
        llm.engine.prompt_ids("x", params(spec, seed=0))
    assert_clean(llm)


def test_unsupported_keyword_in_a_tool_names_the_tool(llm: LLM) -> None:
    bad = {
        "type": "function",
        "function": {
            "name": "sort",
            "parameters": {"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}},
        },
    }
    with pytest.raises(InvalidRequestError, match=r"tool 'sort'.*uniqueItems"):
        llm.generate("x", params(StructuredOutput(tools=(bad,), tool_choice="required"), seed=0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "set exactly one"),
        ({"json_object": True, "regex": "a"}, "set exactly one"),
        ({"json_schema": "not a dict"}, "json_schema"),
        ({"regex": ""}, "regex"),
        ({"choice": ()}, "choice"),
        ({"choice": "yes"}, "choice"),
        ({"tools": ()}, "tools"),
        ({"tools": ({"type": "function", "function": {"name": "bad name!"}},)}, "name"),
        ({"tools": (WEATHER, WEATHER)}, "unique"),
        ({"tools": ({"type": "retrieval"},)}, "function"),
        (
            {"tools": ({"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}},)},
            "object",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
        ({"regex": "a", "tool_choice": "required"}, "needs tools"),
        ({"regex": "a", "parallel_tool_calls": False}, "needs tools"),
        ({"json_schema": {"x": float("nan")}}, "plain JSON"),
    ],
)
def test_bad_specs(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        StructuredOutput(**kwargs)


def test_bad_regex_is_refused(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="regex"):
        llm.engine.check_structured(StructuredOutput(regex="a(b"))


def test_sampling_params_checks_structured() -> None:
    with pytest.raises(InvalidRequestError, match="structured"):
        SamplingParams(structured={"json_object": True})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="ignore_eos"):
        SamplingParams(structured=StructuredOutput(json_object=True), ignore_eos=True)


# ---- helpers ------------------------------------------------------------------------------------------
def test_parse_tool_calls() -> None:
    assert parse_tool_calls(" Hello there ") == ("Hello there", [])
    text = ' Let me check.<tool_calls>[\n    {"name": "a", "arguments": {"x": 1}},\n    {"name": "b", "arguments": "{\\"y\\": 2}"}\n]</tool_calls>'
    assert parse_tool_calls(text) == (
        "Let me check.",
        [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": 2}}],
    )
    assert parse_tool_calls('<tool_calls>[{"name": "a", "arguments": {}}]') == (
        "",
        [{"name": "a", "arguments": {}}],
    )
    with pytest.raises(ValueError, match="cut off"):
        parse_tool_calls('<tool_calls>[{"name": "a", "argu')


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # numpy's path on CPU, and torch's
def test_apply_token_bitmask_touches_only_listed_rows(dtype: torch.dtype) -> None:
    vocab = 70
    logits = torch.randn(4, vocab).to(dtype)
    before = logits.clone()
    allowed = torch.zeros(2, vocab, dtype=torch.bool)
    allowed[0, [0, 5, 31, 32, 69]] = True
    allowed[1, [3, 64]] = True
    words = torch.zeros(2, 3, dtype=torch.int64)
    for r in range(2):
        for t in allowed[r].nonzero().flatten().tolist():
            words[r, t // 32] |= 1 << (t % 32)
    bitmask = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    assert torch.equal(unpack_bitmask(bitmask, vocab), allowed)
    apply_token_bitmask(logits, bitmask, [1, 3])
    assert torch.equal(logits[[0, 2]], before[[0, 2]])
    for r, row in ((0, 1), (1, 3)):
        assert torch.equal(logits[row][allowed[r]], before[row][allowed[r]])
        assert torch.isneginf(logits[row][~allowed[r]]).all()


def test_tool_calls_are_in_the_text_and_plain_requests_hide_special_tokens(llm: LLM) -> None:
    out = llm.generate("x", params(StructuredOutput(tools=TOOLS, tool_choice="required"), seed=0))[0]
    assert out.text.startswith("<tool_calls>")
    plain = llm.generate("x", params(StructuredOutput(json_object=True), seed=0))[0]
    assert "<" not in plain.text[:1]
