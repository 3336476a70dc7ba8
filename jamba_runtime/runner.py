"""Turns a scheduled step into one packed forward: flat token ids, `cu_seqlens`, block tables, slot
indices; runs the model's layers on the paged cache; returns the logits to sample from."""

from __future__ import annotations

import torch

from jamba_runtime.batch import ForwardBatch
from jamba_runtime.model import JambaForCausalLM
from jamba_runtime.paged_cache import PagedHybridCache
from jamba_runtime.scheduler import SchedulerOutput
from jamba_runtime.sequence import Sequence


class ModelRunner:
    def __init__(self, model: JambaForCausalLM, cache: PagedHybridCache) -> None:
        self.model = model
        self.cache = cache

    def execute(self, step: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        """Run every scheduled chunk in one forward.

        Returns the sequences whose known tokens are all in the cache after this step (they need
        a next token) and their `(len(those), vocab)` logits, in that order. A prefill chunk that
        stops short of its sequence's end only updates the cache.
        """
        token_ids: list[int] = []
        query_lens, context_lens, slots, tables = [], [], [], []
        to_sample: list[Sequence] = []
        logits_indices: list[int] = []
        for item in step.scheduled:
            seq, n = item.seq, item.num_tokens
            start = seq.num_computed_tokens
            token_ids.extend(seq.token_range(start, start + n))
            query_lens.append(n)
            context_lens.append(start)
            assert seq.alloc.slot is not None
            slots.append(seq.alloc.slot)
            tables.append(seq.alloc.block_table)
            if start + n == seq.num_tokens:
                to_sample.append(seq)
                logits_indices.append(len(token_ids) - 1)
        device = self.model.device
        batch = ForwardBatch.build(
            query_lens,
            context_lens,
            slots,
            device=device,
            block_tables=tables,
            block_size=self.cache.block_size,
        )
        logits = self.model.forward_packed(
            torch.tensor(token_ids, device=device),
            batch,
            self.cache,
            logits_indices=torch.tensor(logits_indices, dtype=torch.long, device=device),
        )
        return to_sample, logits
