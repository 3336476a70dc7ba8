"""`bench.runtime.gpu`'s structured-output row: tokens/s with JSON Schema constraints against the
same requests unconstrained, at batch 1 and 32, on the GPU model. A mixin of its `Bench`.

The grammar work (llguidance masks, the closing-path budget logic) runs on the CPU beside each
step; this row prices it against a real decode step. It reuses `bench.structured.engine.run_row`
(constrained first, then each request unconstrained with `max_tokens` = its constrained length
and `ignore_eos`, so both sides make the same tokens) on an engine whose tokenizer is the
structured benches' 65,536-token BPE (`bench.structured.bpe65k`; the tiny tokenizer for a model
of another vocab size): the masks cost what they cost at Jamba's vocab size, and every id the
model samples is a real token."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common.gpu_models import make_llm
from bench.structured.bpe65k import bpe65k_tokenizer_json
from bench.structured.engine import run_row
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer


class StructuredRows:
    def structured_row(self, batch: int) -> dict[str, Any]:
        assert self.ours is not None and self.cfg is not None
        args = self.args
        if self.structured_llm is None:
            tok = Path(tempfile.mkdtemp(prefix="jamba-bench-tok-"))
            if self.cfg.vocab_size == 65536:
                write_tiny_tokenizer(tok)  # tokenizer_config.json and the special tokens (ids 0..19 in both)
                (tok / "tokenizer.json").write_text(bpe65k_tokenizer_json(), encoding="utf-8")
            else:  # another shape (the CPU logic check's tiny model): the tiny tokenizer at its vocab
                write_tiny_tokenizer(tok, vocab_size=self.cfg.vocab_size)
            self.structured_llm = make_llm(
                self.ours, tok, max(args.structured_batches), 64 + args.new_tokens + 16
            )
        res = run_row(self.structured_llm, batch, args.new_tokens, args.structured_repeats)
        tps = res["tokens_per_s"]
        return {
            "metric": f"structured b={batch} N={args.new_tokens}",
            "kind": "structured",
            "batch": batch,
            "new_tokens": args.new_tokens,
            "ours": {"tokens_per_s": tps["constrained"]},
            "unconstrained_tokens_per_s": tps["unconstrained"],
            "ratio": tps["ratio"],
            "mask_us": res["mask_us"],
            "budget_us": res["budget_us"],
            "prepare_us": res["prepare_us"],
            "take_us": res["take_us"],
            "step_us": res["step_us"],
            "sample_us": res["sample_us"],
            "complete": res["complete"],
            "errors": {},
        }
