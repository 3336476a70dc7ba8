"""The two sides `bench.runtime.cpu` compares on one checkpoint: `Ours` (jamba_runtime's model
for prefill, its `LLM` for generation) and `Theirs` (transformers' `JambaForCausalLM`), each with
`prefill(ids)`, `generate(ids, n)` (greedy, exactly n tokens) and `lm_head`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import JambaForCausalLM as HFJambaForCausalLM

from jamba_runtime import load_model


class Ours:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.model = load_model(directory, dtype="float32")
        self._llm: Any = None

    @property
    def llm(self) -> Any:
        if self._llm is None:
            # Imported here: the public API may be newer than the layers.
            from jamba_runtime import LLM

            self._llm = LLM(model=str(self.directory), dtype="float32")
        return self._llm

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.llm.model.lm_head

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(ids)

    def generate(self, ids: torch.Tensor, n: int) -> list[list[int]]:
        from jamba_runtime import SamplingParams

        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        outs = self.llm.generate([row.tolist() for row in ids], params)
        return [list(o.token_ids) for o in outs]


class Theirs:
    def __init__(self, directory: Path) -> None:
        self.model = HFJambaForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        # Key difference to ours: there is no ignore_eos; with no eos id, nothing stops or masks.
        self.model.generation_config.eos_token_id = None
        self.pad_token_id = self.model.config.pad_token_id or 0

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(ids).logits

    def generate(self, ids: torch.Tensor, n: int) -> list[list[int]]:
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=self.pad_token_id,
            )
        return out[:, ids.shape[1] :].tolist()
