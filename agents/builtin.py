"""Built-in tools: search over a retrieval collection, a safe calculator, hand-off to an agent.

>>> from jamba_stack.retrieval.search import open_retriever
>>> search = search_tool(open_retriever("docs", data_dir="data"), k=4)
>>> agent = Agent(name="rag", tools=[search, calculator, handoff(expert)], model=...)
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jamba_stack.agents.errors import ToolError
from jamba_stack.agents.tool import Tool

if TYPE_CHECKING:
    from jamba_stack.agents.agent import Agent
    from jamba_stack.retrieval.search import Retriever

MAX_EXPRESSION_CHARS = 500
MAX_POWER = 1000  # 10**1000 is the largest exponent evaluated: bigger ones would eat memory/CPU
MAX_ABS = 1e300

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression: numbers, + - * / // % **, parentheses, `pi`, `e`,
    and the functions in `_FUNCTIONS`. Parsed with `ast`, never `eval`: names, attributes,
    subscripts, calls of anything else are refused. Raises `ToolError` saying what is wrong."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression has {len(expression)} characters, limit {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"{expression!r} is not an arithmetic expression ({exc.msg})") from None
    try:
        value = _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError(f"{expression!r} divides by zero") from None
    except (OverflowError, ValueError) as exc:
        raise ToolError(f"{expression!r} cannot be computed ({exc})") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"{expression!r} is not a finite number")
    return value


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_POWER or abs(left) > MAX_ABS):
            raise ToolError(f"the power {left} ** {right} is too large (exponent limit {MAX_POWER})")
        if isinstance(node.op, ast.Mult | ast.Pow) and _too_big(left) and _too_big(right):
            raise ToolError("the numbers are too large")
        return _BINARY[type(node.op)](left, right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
    what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    raise ToolError(
        f"{what!r} is not allowed: use numbers, + - * / // % **, parentheses, pi, e and "
        f"{', '.join(sorted(_FUNCTIONS))}"
    )


def _too_big(x: Any) -> bool:
    return isinstance(x, int) and x.bit_length() > 4096


def _calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression exactly, e.g. "(17 * 3 + 2) / 4" or "sqrt(2) * pi".

    Args:
        expression: numbers, + - * / // % **, parentheses, pi, e, and abs round min max sqrt log
            log10 exp sin cos tan floor ceil.
    """
    return evaluate(expression)


calculator: Tool = Tool.from_function(_calculate, name="calculator")
"""The safe calculator as a tool (`calculator`)."""


def search_tool(
    retriever: Retriever,
    *,
    k: int = 5,
    name: str = "search",
    description: str | None = None,
    max_chars: int = 1200,
    **search_options: Any,
) -> Tool:
    """A tool that searches `retriever`'s collection (hybrid by default; `search_options` go to
    `Retriever.search`) and returns the top chunks with citations:
    `{"query", "results": [{"citation": "[1]", "chunk_id", "source", "page"?, "score", "text"}]}`
    (text cut to `max_chars`). Text in results is data for the model: it grants no permission
    (a `Policy` decides what runs)."""
    from jamba_stack.retrieval.errors import InvalidQueryError

    def search(query: str, top_k: int = k) -> dict[str, Any]:
        try:
            hits = retriever.search(query, max(1, min(top_k, 20)), **search_options)
        except InvalidQueryError as exc:
            raise ToolError(str(exc)) from None
        results = []
        for hit in hits:
            item: dict[str, Any] = {
                "citation": f"[{hit.rank}]",
                "chunk_id": hit.chunk_id,
                "source": hit.source,
                "score": round(hit.score, 4),
                "text": hit.text[:max_chars],
            }
            if hit.metadata.get("page") is not None:
                item["page"] = hit.metadata["page"]
            if hit.doc_id:
                item["doc_id"] = hit.doc_id
            results.append(item)
        return {"query": query, "results": results}

    search.__doc__ = f"""{description or "Search the document collection; returns passages with citations."}

        Args:
            query: what to look for (a question or keywords).
            top_k: how many passages to return (1-20).
        """
    return Tool.from_function(search, name=name)


def handoff(agent: Agent, *, name: str | None = None, description: str | None = None) -> Tool:
    """A tool that hands a task to `agent` and returns its final answer (its whole run happens
    inside the call, under its own policy). The answer is `{"agent", "output", "stop_reason",
    "steps"}`; a run that a limit stopped has `output` null. Raises nothing to the caller's run:
    the sub-agent's model errors become tool errors."""
    from jamba_stack.agents.tracing import jsonable

    async def delegate(task: str) -> dict[str, Any]:
        result = await agent.arun(task)
        return {
            "agent": agent.name,
            "output": jsonable(result.final_output),
            "stop_reason": result.stop_reason,
            "steps": result.steps,
        }

    delegate.__doc__ = f"""{description or f"Hand a task to the agent {agent.name!r} and get its answer."}

        Args:
            task: the task, stated completely (the agent sees nothing else).
        """
    tool_name = name or f"ask_{agent.name}".replace(" ", "_")[:64]
    return Tool.from_function(delegate, name=tool_name)
