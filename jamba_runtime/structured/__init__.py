"""Structured output: grammar-constrained decoding (docs/structured.md).

| module | job |
|---|---|
| `spec` | `StructuredOutput`: what an output must be, validated (imports no grammar code) |
| `compiler` | `GrammarCompiler` (spec -> `CompiledGrammar`, LRU cache; fills a step's masks) |
| `matcher` | `GrammarMatcher` (one sequence's grammar state and budget logic), `CompiledGrammar` |
| `masks` | token bitmask layout: `unpack_bitmask`, `apply_token_bitmask` |
| `step_masks` | `MaskWorker`: a step's masks filled on a worker thread while the forward is launched |
| `tools` | the grammar of Jamba's `<tool_calls>` block, and `parse_tool_calls` |
| `closing` | closing paths: how an output still ends whole when `max_tokens` is near |
| `hints` | short strings that satisfy a spec's patterns and formats, typed by closing paths |
| `json_schema` | which JSON Schemas we take and how we narrow them (`narrow_schema`, `JSON_OPTIONS`) |
| `unique_spec`, `unique` | `uniqueItems: true`: where a schema asks for it (`UniqueSpec`), and its enforcement while decoding (`UniqueTracker`) |
"""
