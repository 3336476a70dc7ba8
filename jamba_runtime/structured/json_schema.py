"""JSON Schema rules for constrained decoding: which schemas we take, and how we narrow them.

llguidance compiles a JSON Schema to a grammar; these rules sit around it. `JSON_OPTIONS` fixes the
layout of the JSON it writes. `narrow_schema` admits a subset of a schema's values that common
validators and parsers take as they are (formats as patterns, numbers within doubles' exact
integers). `refuse_legacy` refuses Draft-4/7 forms whose old meaning the grammar would not apply,
and `explain_grammar_error` turns llguidance's error for a schema it cannot enforce into a message
that names the keyword and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from jamba_runtime.errors import InvalidRequestError

# JSON as `json.dumps` writes it (and as Jamba's template renders tool arguments): ", " and ": ",
# no other whitespace. A fixed layout keeps a model from padding with whitespace forever.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Draft-4/7 forms that llguidance accepts without applying their old meaning; refuse them rather
# than risk output that an older-draft validator rejects.
_LEGACY_FORMS = "use the Draft 2020-12 form"

# Formats narrowed to what common validators accept. RFC 3339 dates and times as Python's
# rfc3339-validator and `datetime` take them: years 0001-9999, no February 29 (valid only in leap
# years), no leap second (:60); llguidance's own formats allow all three. Host names with labels
# of at most 63 characters and 253 in all (RFC 1123, the `fqdn` package); llguidance's does not
# bound labels.
_DATE = (
    r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-"
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
)
_TIME = (
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FORMAT_PATTERNS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "hostname": rf"^(?:{_LABEL}\.)*{_LABEL}$",
}
_FORMAT_MAX_LENGTH = {"hostname": 253}


# Numbers without bounds of their own stay within +-(2**53 - 1), the integers a double (and
# JavaScript) holds exactly. Unbounded, a model can write 1E1804 (a float overflow: `json.loads`
# gives inf) or a 300-digit integer (jsonschema's multipleOf then raises OverflowError); bounded,
# llguidance also writes no exponent.
MAX_SAFE_INTEGER = 2**53 - 1

# `json_object`: any object, its numbers bounded as above.
JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "$defs": {
        "value": {
            "anyOf": [
                {"type": "null"},
                {"type": "boolean"},
                {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
                {"type": "string"},
                {"type": "array", "items": {"$ref": "#/$defs/value"}},
                {"type": "object", "additionalProperties": {"$ref": "#/$defs/value"}},
            ]
        }
    },
    "type": "object",
    "additionalProperties": {"$ref": "#/$defs/value"},
}


# Keywords whose value JSON Schema defines as a non-negative integer, where 2.0 counts as 2.
_COUNT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
# The integers llguidance reads from a schema (its JSON numbers are 64-bit).
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def narrow_schema(schema: Any) -> Any:
    """A copy of `schema` that admits a subset of its values, each of which common validators
    and parsers take as it is: date, time, date-time and hostname formats become patterns
    (`_FORMAT_PATTERNS`; other formats are left to llguidance), numbers with no bound on a side
    get `MAX_SAFE_INTEGER` there, and a non-integer `multipleOf` bounds its numbers to where each
    multiple's decimal text is the double it parses to (`_multiple_bound`).

    Also written in the form llguidance reads: integral counts (`minLength: 2.0`) as integers,
    no-op keywords (`uniqueItems: false`, `unevaluatedProperties: true`) left out, and
    `uniqueItems: true` left out (the matcher enforces it: `structured/unique.py`)."""
    if not isinstance(schema, dict):
        return schema
    schema = json.loads(json.dumps(schema))
    for _, node in _walk(schema, "#"):
        for key in _COUNT_KEYWORDS:
            value = node.get(key)
            if isinstance(value, float) and value.is_integer():
                node[key] = int(value)
        if isinstance(node.get("uniqueItems"), bool):
            del node["uniqueItems"]
        for key in ("unevaluatedProperties", "unevaluatedItems"):
            if node.get(key) is True or node.get(key) == {}:
                del node[key]
        types = node.get("type")
        types = {types} if isinstance(types, str) else set(types) if isinstance(types, list) else set()
        if types & {"number", "integer"}:
            low = node.get("minimum", node.get("exclusiveMinimum"))
            high = node.get("maximum", node.get("exclusiveMaximum"))
            if high is None and (not isinstance(low, int | float) or low <= MAX_SAFE_INTEGER):
                node["maximum"] = MAX_SAFE_INTEGER
            if low is None and (not isinstance(high, int | float) or high >= -MAX_SAFE_INTEGER):
                node["minimum"] = -MAX_SAFE_INTEGER
            bound = _multiple_bound(node.get("multipleOf"))
            if bound is not None:
                if not isinstance(node.get("maximum"), int | float) or node["maximum"] > bound:
                    node["maximum"] = bound
                if not isinstance(node.get("minimum"), int | float) or node["minimum"] < -bound:
                    node["minimum"] = -bound
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt in _FORMAT_PATTERNS:
            del node["format"]
            if "pattern" in node:
                node["allOf"] = [*node.get("allOf", []), {"pattern": _FORMAT_PATTERNS[fmt]}]
            else:
                node["pattern"] = _FORMAT_PATTERNS[fmt]
            if fmt in _FORMAT_MAX_LENGTH:
                limit = _FORMAT_MAX_LENGTH[fmt]
                node["maxLength"] = min(node.get("maxLength", limit), limit)
    return schema


def _multiple_bound(step: Any) -> float | None:
    """For a non-integer `multipleOf`, the largest magnitude up to which every multiple's decimal
    text parses to exactly that number as a double; None for an integer step (or none).

    A step that is a binary fraction (1.5 = 3/2, 0.25) has exact multiples below 2**53 times its
    denominator's reciprocal. A decimal step (0.1) has multiples no double holds exactly (0.3);
    they are bounded to 15 significant digits, where the text still parses back to the same
    decimal (a float validator dividing 0.3 by 0.1 may still disagree)."""
    if not isinstance(step, float) or step.is_integer() or step <= 0:
        return None
    exact = Fraction(Decimal(repr(step)))
    q = exact.denominator
    if q & (q - 1) == 0:  # a power of two
        return float(Fraction(MAX_SAFE_INTEGER, q))
    digits = -Decimal(repr(step)).normalize().as_tuple().exponent
    return float(10 ** (15 - max(0, int(digits))) - 1)


def refuse_unrepresentable(schema: Any, what: str) -> None:
    """Refuse integers that constrained decoding cannot hold (it reads 64-bit numbers): raises
    `InvalidRequestError` naming `what`, the keyword, its place and the range."""
    stack: list[tuple[Any, str, str]] = [(schema, "#", "")]
    while stack:
        value, path, keyword = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{path}/{k}", k) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}/{i}", keyword) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
            raise InvalidRequestError(
                f"{what} has the integer {value} in {keyword!r} at {path}, beyond the 64-bit range constrained "
                f"decoding reads ({_INT_MIN:,} to {_INT_MAX:,}): use a smaller number"
            )


def refuse_legacy(schema: Any, what: str) -> None:
    """Refuse Draft-4/7 forms whose old meaning the grammar would not apply.

    Raises `InvalidRequestError` naming `what` (e.g. "json_schema"), the keyword, its place in the
    schema and the Draft 2020-12 form to use instead."""
    for path, node in _walk(schema, "#"):
        if isinstance(node.get("items"), list):
            raise InvalidRequestError(
                f"{what} uses the JSON Schema keyword 'items' as a list at {path}, which constrained "
                f"decoding cannot enforce: {_LEGACY_FORMS}, 'prefixItems'"
            )
        if "additionalItems" in node:
            raise InvalidRequestError(
                f"{what} uses the JSON Schema keyword 'additionalItems' at {path}, which constrained "
                f"decoding cannot enforce: {_LEGACY_FORMS}, 'prefixItems' with 'items'"
            )
        for k in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(node.get(k), bool):
                raise InvalidRequestError(
                    f"{what} uses the JSON Schema keyword {k!r} as a boolean at {path}, which constrained "
                    f"decoding cannot enforce: {_LEGACY_FORMS}, a number"
                )


_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*)\]")


def explain_grammar_error(what: str, message: str) -> str:
    """A user-facing message for llguidance's error `message` about `what` (e.g. "json_schema",
    "tool 'f' parameters"): the keyword or format it cannot enforce and what to do instead."""
    m = _UNIMPLEMENTED.search(message)
    if m:
        keys = [k.strip().strip('"') for k in m.group(1).split(",") if k.strip()]
        listed = ", ".join(repr(k) for k in keys)
        word = "keyword" if len(keys) == 1 else "keywords"
        return (
            f"{what} uses the JSON Schema {word} {listed}, which constrained decoding cannot enforce: "
            "remove it (check it after generation instead) or express it with supported keywords"
        )
    if message.startswith("Unknown format"):
        fmt = message.split(":", 1)[-1].strip()
        return (
            f"{what} uses the string format {fmt!r}, which constrained decoding cannot enforce: use "
            "date-time, time, date, duration, email, hostname, ipv4, ipv6, uuid or uri, or a pattern"
        )
    if "min/maxProperties" in message:
        return (
            f"{what} uses the JSON Schema keyword 'minProperties' or 'maxProperties' on an object with "
            "optional properties, which constrained decoding cannot enforce: make every listed property "
            "required (bounds then apply to additionalProperties), or drop the bound"
        )
    if "oneOf" in message:
        return (
            f"{what} uses the JSON Schema keyword 'oneOf' with alternatives that may overlap, which "
            "constrained decoding cannot enforce: use anyOf, or make the alternatives disjoint "
            "(e.g. different types or a distinguishing const)"
        )
    first = message.strip().splitlines()
    detail = " ".join(line.strip() for line in first[:6])
    return f"{what} cannot be enforced by constrained decoding: {detail}"


_SCHEMA_VALUED = (
    "additionalProperties",
    "items",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def _walk(node: Any, path: str) -> Iterable[tuple[str, dict]]:
    """Every subschema of `node` with its JSON pointer, `node` first."""
    if not isinstance(node, dict):
        return
    yield path, node
    for k in _SCHEMA_VALUED:
        if isinstance(node.get(k), dict):
            yield from _walk(node[k], f"{path}/{k}")
    for k in _SCHEMA_MAPS:
        if isinstance(node.get(k), dict):
            for name, sub in node[k].items():
                yield from _walk(sub, f"{path}/{k}/{name}")
    for k in _SCHEMA_LISTS:
        if isinstance(node.get(k), list):
            for i, sub in enumerate(node[k]):
                yield from _walk(sub, f"{path}/{k}/{i}")


__all__ = [
    "JSON_OBJECT_SCHEMA",
    "JSON_OPTIONS",
    "MAX_SAFE_INTEGER",
    "explain_grammar_error",
    "narrow_schema",
    "refuse_legacy",
    "refuse_unrepresentable",
]
