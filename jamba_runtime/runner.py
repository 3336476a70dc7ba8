"""Turns a scheduled step into one packed forward: flat token ids, `cu_seqlens`, block tables, slot
indices; runs the model's layers on the paged cache; returns the logits to sample from.

The one switch between the reference path and the GPU fast path lives here: `execute` asks the
cache whether the packed/paged kernels can run (`PagedHybridCache.paged_kernels_available`) and,
when `fast_path` is on, builds the batch with `paged_kernels=True`; the layers then call the
kernels on the packed tensors and the cache's tensors in place (docs/runtime.md).
"""

from __future__ import annotations

import torch

from jamba_runtime.batch import ForwardBatch
from jamba_runtime.model import JambaForCausalLM
from jamba_runtime.paged_cache import PagedHybridCache
from jamba_runtime.scheduler import SchedulerOutput
from jamba_runtime.sequence import Sequence


class ModelRunner:
    """Runs scheduled steps on `cache`.

    Attributes:
        fast_path: let steps use the packed/paged kernels when the cache says they can run (on by
            default; off runs the layers' reference path over `LayerCache`, padded kernels included,
            which benchmarks and bisections compare against).
    """

    def __init__(self, model: JambaForCausalLM, cache: PagedHybridCache, fast_path: bool = True) -> None:
        self.model = model
        self.cache = cache
        self.fast_path = fast_path

    def uses_fast_path(self) -> bool:
        """Whether the next step runs the packed/paged kernels (decided per step: the kernel
        backend can change between steps, e.g. under `kernel_backend("reference")`)."""
        return self.fast_path and self.cache.paged_kernels_available()

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
            paged_kernels=self.uses_fast_path(),
        )
        logits = self.model.forward_packed(
            torch.tensor(token_ids, device=device),
            batch,
            self.cache,
            logits_indices=torch.tensor(logits_indices, dtype=torch.long, device=device),
        )
        return to_sample, logits
