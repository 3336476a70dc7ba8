"""Tokenizers and chat templates.

| module | job |
|---|---|
| `tokenizer` | `Tokenizer` (`tokenizer.json` + `tokenizer_config.json`) and the streaming detokenizer |
| `chat_template` | chat-template rendering as `transformers` does it; the built-in Jamba template (`templates/`) |
| `tiny` | the tiny deterministic byte-level BPE tokenizer of the tiny test model |
"""
