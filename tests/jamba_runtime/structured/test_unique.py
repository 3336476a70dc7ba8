"""JSON Schema keywords around the grammar, on the tiny random model: `uniqueItems: true`
enforced while decoding (never an item equal to an earlier one, whatever the weights want),
non-integer `multipleOf` bounded to numbers a double holds exactly, integers past 64 bits refused
by name, and valid schemas the grammar used to refuse (`minLength: 2.0`, no-op keywords,
ECMA-262 `\\p{...}` patterns)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from jamba_runtime import LLM, EngineConfig, SamplingParams, StructuredOutput
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.structured.json_schema import narrow_schema

SEEDS = range(16)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir, engine=EngineConfig(max_num_seqs=32, max_num_batched_tokens=1024))


def _generate(llm: LLM, schema: dict, seeds: range = SEEDS, max_tokens: int = 120) -> list:
    spec = StructuredOutput(json_schema=schema)
    params = [SamplingParams(max_tokens=max_tokens, temperature=1.3, seed=s, structured=spec) for s in seeds]
    return llm.generate(["List:"] * len(params), params)


def _items_key(value: object) -> object:
    return ("n", Decimal(repr(value))) if isinstance(value, float) else (type(value).__name__, value)


UNIQUE = {
    "enum, all values needed": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c", "d"]}, "uniqueItems": True, "minItems": 4}
        },
        "required": ["tags"],
        "additionalProperties": False,
    },
    "short strings": {
        "type": "array",
        "items": {"type": "string", "maxLength": 1, "pattern": "^[ab]*$"},
        "uniqueItems": True,
        "minItems": 3,
    },
    "free strings": {"type": "array", "items": {"type": "string", "maxLength": 3}, "uniqueItems": True, "minItems": 3},
    "integers in a small range": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 3},
        "uniqueItems": True,
        "minItems": 4,
    },
    "numbers (1 and 1.0 are equal)": {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 2},
        "uniqueItems": True,
        "minItems": 3,
        "maxItems": 5,
    },
    "optional set via $ref": {
        "$defs": {"Tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "uniqueItems": True, "minItems": 2}},
        "type": "object",
        "properties": {"s": {"anyOf": [{"$ref": "#/$defs/Tags"}, {"type": "null"}]}},
        "required": ["s"],
        "additionalProperties": False,
    },
    "nested in an array of objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"ids": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2}, "uniqueItems": True}},
            "required": ["ids"],
            "additionalProperties": False,
        },
        "minItems": 2,
        "maxItems": 2,
    },
    "booleans and null": {
        "type": "array",
        "items": {"type": ["boolean", "null"]},
        "uniqueItems": True,
        "minItems": 3,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", list(UNIQUE))
def test_unique_items_never_repeat(llm: LLM, name: str) -> None:
    schema = UNIQUE[name]
    validator = jsonschema.Draft202012Validator(schema)
    for out in _generate(llm, schema):
        assert out.finish_reason == "stop", out.text
        value = json.loads(out.text)
        validator.validate(value)  # uniqueItems included: jsonschema checks it


def test_unique_items_under_the_budget(llm: LLM) -> None:
    # Closing paths (max_tokens nearly spent) keep to the rule too.
    schema = {"type": "array", "items": {"enum": ["p", "q", "r"]}, "uniqueItems": True, "minItems": 3}
    for out in _generate(llm, schema, max_tokens=16):
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), schema)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "items": {"type": "object"}, "uniqueItems": True}, "objects or arrays"),
        ({"type": "array", "uniqueItems": True}, "objects or arrays"),
        (
            {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True, "minItems": 3},
            "only 2 possible",
        ),
        (
            {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 3},
            "only 2 possible",
        ),
        ({"not": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}, "under 'not'"),
    ],
)
def test_unique_items_it_cannot_enforce_are_refused(llm: LLM, schema: dict, named: str) -> None:
    with pytest.raises(InvalidRequestError, match="uniqueItems|unique items") as info:
        llm.engine.check_structured(StructuredOutput(json_schema=schema))
    assert named in str(info.value)


def test_unique_items_in_tool_parameters_are_refused_by_name(llm: LLM) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "tag",
            "parameters": {"type": "object", "properties": {"t": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}},
        },
    }  # fmt: skip
    with pytest.raises(InvalidRequestError, match="uniqueItems.*tool arguments"):
        llm.engine.check_structured(StructuredOutput(tools=(tool,), tool_choice="required"))


# ---- numbers -----------------------------------------------------------------------------------
def _grammar_takes(llm: LLM, schema: dict, text: str) -> bool:
    grammars = llm.engine.grammars
    m = grammars.matcher(StructuredOutput(json_schema=schema))
    ids = grammars.lltokenizer.tokenize_str(text)
    return all(m.accept(t) for t in ids) and m.is_accepting()


def test_non_integer_multiple_of_stays_where_doubles_are_exact(llm: LLM) -> None:
    half = {
        "type": "object",
        "properties": {"x": {"type": "number", "multipleOf": 1.5}},
        "required": ["x"],
        "additionalProperties": False,
    }
    # 4595801802545458.5 is a multiple of 1.5 that no double holds (it parses as ...458.0)
    assert not _grammar_takes(llm, half, '{"x": 4595801802545458.5}')
    assert _grammar_takes(llm, half, '{"x": 4.5}') and _grammar_takes(llm, half, '{"x": -3}')
    bounded = narrow_schema(half)["properties"]["x"]
    assert bounded["maximum"] == (2**53 - 1) / 2 and bounded["minimum"] == -(2**53 - 1) / 2
    tenth = narrow_schema({"type": "number", "multipleOf": 0.1})
    assert tenth["maximum"] == 10**14 - 1  # 15 significant digits with one after the point
    for out in _generate(llm, half, seeds=range(8), max_tokens=40):
        text = out.text.split(": ", 1)[1].rstrip("}")
        assert Decimal(repr(float(text))) == Decimal(text), text  # the double is the number written
        assert Decimal(text) % Decimal("1.5") == 0


@pytest.mark.parametrize(
    ("node", "keyword"),
    [
        ({"type": "integer", "minimum": -18446744073709551615}, "minimum"),
        ({"const": 18446744073709551616}, "const"),
        ({"enum": [1, 2**64]}, "enum"),
        ({"type": "integer", "multipleOf": 2**64}, "multipleOf"),
        ({"type": "integer", "maximum": -(2**63) - 1}, "maximum"),
    ],
)
def test_integers_past_64_bits_are_refused_by_keyword(llm: LLM, node: dict, keyword: str) -> None:
    schema = {"type": "object", "properties": {"a": node}}
    with pytest.raises(InvalidRequestError, match=f"in '{keyword}' at #/properties/a"):
        llm.engine.check_structured(StructuredOutput(json_schema=schema))


# ---- valid schemas taken ------------------------------------------------------------------------
def test_valid_schemas_the_grammar_used_to_refuse(llm: LLM) -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 2.0, "maxLength": 3.0},
            "w": {"type": "string", "pattern": "^\\p{Letter}{1,4}$"},
            "t": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "uniqueItems": False, "maxItems": 2.0},
            "any": True,
        },
        "required": ["s", "w", "t", "any"],
        "unevaluatedProperties": True,
        "additionalProperties": False,
    }  # fmt: skip
    for out in _generate(llm, schema, seeds=range(6), max_tokens=100):
        assert out.finish_reason == "stop", out.text
        value = json.loads(out.text)
        assert 2 <= len(value["s"]) <= 3 and len(value["t"]) <= 2
        assert 1 <= len(value["w"]) <= 4 and all(c.isalpha() for c in value["w"]), value
