"""`uniqueItems`: where a JSON Schema asks for unique items (`UniqueSpec`, built once per compiled
grammar and refusing what the tracker cannot follow) and how items compare (`item_key`: JSON
Schema's equality, strings after unescaping, numbers by value). `unique.py` enforces it while
decoding."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from jamba_runtime.errors import InvalidRequestError

_SCALAR_TYPES = {"string", "number", "integer", "boolean", "null"}
_UNSUPPORTED_UNDER = {
    "if",
    "then",
    "else",
    "not",
    "contains",
    "patternProperties",
    "dependentSchemas",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
}


class UniqueSpec:
    """Where a JSON Schema asks for unique items, in a form the tracker walks: the schema's root
    (for `$ref`) and resolution of the subschemas at an object key or an array index.
    Built by `of`, once per compiled grammar; read-only after."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self._expanded: dict[tuple[int, ...], list[dict]] = {}

    @classmethod
    def of(cls, schema: Any, what: str) -> UniqueSpec | None:
        """The spec of `schema`, or None when no array in it has `uniqueItems: true`.

        Raises `InvalidRequestError` naming `what` and the place when `uniqueItems: true` is where
        it cannot be enforced (see the module docstring)."""
        if not isinstance(schema, dict):
            return None
        places = list(_unique_places(schema, "#", ()))
        if not places:
            return None
        spec = cls(schema)
        for path, keywords, node in places:
            bad = next((k for k in keywords if k in _UNSUPPORTED_UNDER), None)
            if bad is not None:
                raise InvalidRequestError(
                    f"{what} has 'uniqueItems': true at {path}, under '{bad}', where constrained decoding cannot "
                    "enforce it: move it out, or drop it (check it after generation instead)"
                )
            spec._check_items(node, path, what)
        return spec

    def _check_items(self, node: dict, path: str, what: str) -> None:
        items = [n for n in self.expand([node]) if n.get("uniqueItems") is True]
        schemas: list[Any] = []
        for n in items:
            schemas += list(n.get("prefixItems") or [])
            schemas.append(n.get("items", True))  # without items, any item may follow
        values: set[Any] | None = set()
        for item in schemas:
            if item is False:
                continue
            expanded = self.expand([item]) if isinstance(item, dict) else [{}]
            for sub in expanded or [{}]:
                kinds = _scalar_kinds(sub)
                if kinds is None:
                    raise InvalidRequestError(
                        f"{what} has 'uniqueItems': true at {path} on items that may be objects or arrays (or "
                        "anything): constrained decoding enforces uniqueItems for arrays of strings, numbers, "
                        "booleans and enums of those; give the items such a type, or drop uniqueItems"
                    )
                finite = _finite_values(sub)
                if finite is None or values is None:
                    values = None
                else:
                    values |= finite
        low = max(
            (n.get("minItems", 0) for n in items if isinstance(n.get("minItems"), int | float)), default=0
        )
        if values is not None and low > len(values):
            raise InvalidRequestError(
                f"{what} asks at {path} for at least {low:g} unique items of only {len(values)} possible values, "
                "which no output satisfies: lower minItems or allow more values"
            )

    # ---- resolution (also used while decoding) ------------------------------------------------
    def expand(self, nodes: Iterable[Any]) -> list[dict]:
        """`nodes` with every `$ref` followed and allOf / anyOf / oneOf members added (a value at
        this place may be governed by any of them); `true` is `{}`."""
        nodes = list(nodes)
        key = tuple(id(n) for n in nodes)
        hit = self._expanded.get(key)
        if hit is not None:
            return hit
        out: list[dict] = []
        seen: set[int] = set()
        todo = [({} if n is True else n) for n in nodes if isinstance(n, dict) or n is True]
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            out.append(n)
            ref = n.get("$ref")
            if isinstance(ref, str):
                target = self._resolve(ref)
                if target is not None:
                    todo.append(target)
            for k in ("allOf", "anyOf", "oneOf"):
                if isinstance(n.get(k), list):
                    todo.extend(({} if s is True else s) for s in n[k] if isinstance(s, dict) or s is True)
        self._expanded[key] = out
        return out

    def _resolve(self, ref: str) -> dict | None:
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            return None
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node if isinstance(node, dict) else ({} if node is True else None)

    def property_nodes(self, nodes: list[dict], key: str) -> list[dict]:
        out = []
        for n in self.expand(nodes):
            props = n.get("properties")
            if isinstance(props, dict) and key in props:
                out.append(props[key])
            elif isinstance(n.get("additionalProperties"), dict):
                out.append(n["additionalProperties"])
        return [x for x in out if isinstance(x, dict)]

    def item_nodes(self, nodes: list[dict], index: int) -> list[dict]:
        out = []
        for n in self.expand(nodes):
            prefix = n.get("prefixItems")
            if isinstance(prefix, list) and index < len(prefix):
                out.append(prefix[index])
            elif isinstance(n.get("items"), dict):
                out.append(n["items"])
        return [x for x in out if isinstance(x, dict)]

    def is_unique(self, nodes: list[dict]) -> bool:
        return any(n.get("uniqueItems") is True for n in self.expand(nodes))


def _unique_places(
    node: Any, path: str, keywords: tuple[str, ...]
) -> Iterable[tuple[str, tuple[str, ...], dict]]:
    """Every subschema with `uniqueItems: true`, with its pointer and the keywords above it."""
    stack: list[tuple[Any, str, tuple[str, ...]]] = [(node, path, keywords)]
    while stack:
        n, p, kws = stack.pop()
        if isinstance(n, list):
            stack.extend((x, f"{p}/{i}", kws) for i, x in enumerate(n))
            continue
        if not isinstance(n, dict):
            continue
        if n.get("uniqueItems") is True:
            yield p, kws, n
        for k, v in n.items():
            if k in ("enum", "const", "default", "examples"):
                continue  # values, not subschemas
            if k in ("properties", "$defs", "definitions", "dependentSchemas", "patternProperties"):
                if isinstance(v, dict):
                    stack.extend((x, f"{p}/{k}/{name}", (*kws, k)) for name, x in v.items())
            elif isinstance(v, dict | list):
                stack.append((v, f"{p}/{k}", (*kws, k)))


def _scalar_kinds(node: dict) -> set[str] | None:
    """The scalar types a subschema allows, or None if it may allow objects or arrays."""
    if "const" in node:
        return {_kind(node["const"])} if _kind(node["const"]) else None
    if isinstance(node.get("enum"), list):
        kinds = {_kind(v) for v in node["enum"]}
        return None if None in kinds else kinds  # type: ignore[return-value]
    types = node.get("type")
    types = {types} if isinstance(types, str) else set(types) if isinstance(types, list) else None
    if types is None or not types <= _SCALAR_TYPES:
        # no type of its own: maybe its members say (anyOf of scalars are expanded separately)
        return None if types is not None or not _composite(node) else set()
    return types


def _composite(node: dict) -> bool:
    return any(isinstance(node.get(k), list) for k in ("allOf", "anyOf", "oneOf")) or "$ref" in node


def _finite_values(node: dict) -> set[Any] | None:
    """The distinct values a scalar subschema allows when they are few (enum, const, boolean,
    null), as comparison keys; None when unbounded."""
    if "const" in node:
        return {item_key(node["const"])}
    if isinstance(node.get("enum"), list):
        return {item_key(v) for v in node["enum"]}
    types = node.get("type")
    types = {types} if isinstance(types, str) else set(types) if isinstance(types, list) else set()
    if types and types <= {"boolean", "null"}:
        values: set[Any] = set()
        if "boolean" in types:
            values |= {("l", "true"), ("l", "false")}
        if "null" in types:
            values.add(("l", "null"))
        return values
    return None


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return None


def item_key(value: Any) -> tuple[str, Any]:
    """How an item compares: strings by text, numbers by value (1 == 1.0), literals by name."""
    if isinstance(value, bool) or value is None:
        return ("l", json.dumps(value))
    if isinstance(value, int | float):
        return ("n", Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    return ("s", value)


def bare_key(text: bytes) -> tuple[str, Any]:
    raw = text.decode("ascii", "replace")
    if raw in ("true", "false", "null"):
        return ("l", raw)
    try:
        return ("n", Decimal(raw))
    except InvalidOperation:
        return ("l", raw)


# ---- while decoding ------------------------------------------------------------------------------
