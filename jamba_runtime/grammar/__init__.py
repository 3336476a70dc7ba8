"""Grammars for constrained decoding: specs compiled to llguidance, per-sequence matchers, masks.

| module | job |
|---|---|
| `compiler` | `GrammarCompiler` (spec -> `CompiledGrammar`, LRU cache; fills a step's masks) |
| `matcher` | `GrammarMatcher` (one sequence's grammar state and budget logic) |
| `masks` | token bitmask layout: `unpack_bitmask`, `apply_token_bitmask` |
| `tools` | the grammar of Jamba's `<tool_calls>` block |
| `step_masks` | `MaskWorker`: a step's masks filled on a worker thread while the forward runs |

The spec itself (`StructuredOutput`) is in `jamba_runtime.structured`; closing paths in
`jamba_runtime.grammar_closing`; JSON Schema narrowing in `jamba_runtime.json_schema_rules`.
"""

from jamba_runtime.grammar.compiler import CompiledGrammar, GrammarCompiler
from jamba_runtime.grammar.masks import apply_token_bitmask, unpack_bitmask
from jamba_runtime.grammar.matcher import GrammarMatcher
from jamba_runtime.grammar.tools import TOOL_CALLS_END, TOOL_CALLS_START, tool_parameters

__all__ = [
    "TOOL_CALLS_END",
    "TOOL_CALLS_START",
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "apply_token_bitmask",
    "tool_parameters",
    "unpack_bitmask",
]
