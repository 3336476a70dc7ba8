"""Turns a scheduled step into one packed forward: flat token ids, `cu_seqlens`, block tables, slot
indices; runs the model's layers on the paged cache; returns the logits to sample from.

The one switch between the reference path and the GPU fast path lives here: `execute` asks the
cache whether the packed/paged kernels can run (`PagedHybridCache.paged_kernels_available`) and,
when `fast_path` is on, builds the batch with `paged_kernels=True`; the layers then call the
kernels on the packed tensors and the cache's tensors in place (docs/runtime.md).

On the reference path the attention and the Mamba conv and scan pad every sequence of a forward
to the longest one's new tokens, so 63 decodes beside a 2,048-token prompt chunk would each run
2,048 padded positions. There a step runs as several forwards instead, one per group of sequences
of about the same length (`forward_groups`): the decodes together, each long chunk on its own.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from jamba_runtime.cache.batch import ForwardBatch
from jamba_runtime.cache.paged import PagedHybridCache
from jamba_runtime.engine.graphs import DecodeGraphs
from jamba_runtime.engine.scheduler import SchedulerOutput
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.model.modeling import JambaForCausalLM


def decode_inputs(step: SchedulerOutput) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """A decode step as `DecodeGraphs.run` takes it: each sequence's newest token, state slot,
    length and block table (what a tensor-parallel rank 0 also sends to the other ranks)."""
    seqs = [item.seq for item in step.scheduled]
    slots = [s.alloc.slot for s in seqs]
    assert all(x is not None for x in slots)
    tokens = [s.token_range(s.num_tokens - 1, s.num_tokens)[0] for s in seqs]
    return tokens, slots, [s.num_tokens for s in seqs], [s.alloc.block_table for s in seqs]  # type: ignore[return-value]


def forward_groups(query_lens: list[int], max_padding: float = 2.0) -> list[list[int]]:
    """Split a step's sequences (by index) into groups that run as separate forwards on the
    reference path, where each forward pads its sequences to its longest one's new tokens.

    Sequences are taken shortest first; one joins the current group while the group padded to
    its length stays within `max_padding` times its real tokens. So decodes (one token each) run
    together, and a prefill chunk runs beside them only when that costs at most twice its own
    work. Every index appears in exactly one group; the groups are in no particular order.
    """
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for i in sorted(range(len(query_lens)), key=lambda i: query_lens[i]):
        n = query_lens[i]
        if group and (len(group) + 1) * n > max_padding * (real + n):
            groups.append(group)
            group, real = [], 0
        group.append(i)
        real += n
    if group:
        groups.append(group)
    return groups


@dataclass
class StepPlan:
    """One step's forward as host lists (picklable): the packed tokens, each sequence's new and
    cached token counts, state slot and block table, and which rows are sampled.

    Attributes:
        fast: run the packed/paged kernels (the runner's decision on rank 0, followed by all).
        sample_rows: indices (into the step's sequences) of those whose next token is wanted.
        logits_indices: their last tokens' positions in `token_ids`.
    """

    fast: bool
    token_ids: list[int] = field(default_factory=list)
    query_lens: list[int] = field(default_factory=list)
    context_lens: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    block_tables: list[list[int]] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    logits_indices: list[int] = field(default_factory=list)


class ModelRunner:
    """Runs scheduled steps on `cache`.

    Attributes:
        fast_path: let steps use the packed/paged kernels when the cache says they can run (on by
            default; off runs the layers' reference path over `LayerCache`, padded kernels included,
            which benchmarks and bisections compare against).
        graphs: captured decode steps (`graphs.py`), used for a step where every sequence
            runs its one newest token on the fast path; None runs every step eagerly.
    """

    def __init__(
        self,
        model: JambaForCausalLM,
        cache: PagedHybridCache,
        fast_path: bool = True,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.fast_path = fast_path
        self.graphs = graphs

    def uses_fast_path(self) -> bool:
        """Whether the next step runs the packed/paged kernels (decided per step: the kernel
        backend can change between steps, e.g. under `kernel_backend("reference")`)."""
        return self.fast_path and self.cache.paged_kernels_available()

    def execute(self, step: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor]:
        """Run every scheduled chunk: in one forward, or on the reference path in one per group of
        like-sized chunks (`run`).

        Returns the sequences whose known tokens are all in the cache after this step (they need
        a next token) and their `(len(those), vocab)` logits, in that order. A prefill chunk that
        stops short of its sequence's end only updates the cache.
        """
        if self._graph_step(step):
            assert self.graphs is not None
            return [item.seq for item in step.scheduled], self.graphs.run(*decode_inputs(step))
        plan = self.plan(step)
        seqs = [item.seq for item in step.scheduled]
        return [seqs[i] for i in plan.sample_rows], self.run(plan)

    def execute_fed(self, step: SchedulerOutput, tokens: torch.Tensor) -> torch.Tensor:
        """Run a decode step (one token per sequence, each after a cached past) whose input tokens
        are `tokens`, a `(len(step.scheduled),)` int64 tensor on the model's device, in place of
        the sequences' own newest tokens (not read yet: `engine/ahead.py`). Returns every
        sequence's `(n, vocab)` logits, in order."""
        if self._graph_step(step):
            assert self.graphs is not None
            return self.graphs.run(*decode_inputs(step), device_tokens=tokens)
        plan = self.plan(step)
        assert all(n == 1 for n in plan.query_lens) and len(plan.sample_rows) == len(plan.query_lens)
        return self._forward(plan, tokens)

    def plan(self, step: SchedulerOutput) -> StepPlan:
        """The step as plain host data: what `run` needs, and what a tensor-parallel rank 0 sends
        to the other ranks so that they run the same forward (`tensor_parallel.py`)."""
        plan = StepPlan(fast=self.uses_fast_path())
        for i, item in enumerate(step.scheduled):
            seq, n = item.seq, item.num_tokens
            start = seq.num_computed_tokens
            plan.token_ids.extend(seq.token_range(start, start + n))
            plan.query_lens.append(n)
            plan.context_lens.append(start)
            assert seq.alloc.slot is not None
            plan.slots.append(seq.alloc.slot)
            plan.block_tables.append(seq.alloc.block_table)  # read (or pickled) before the step ends
            if start + n == seq.num_tokens:
                plan.sample_rows.append(i)
                plan.logits_indices.append(len(plan.token_ids) - 1)
        return plan

    def run(self, plan: StepPlan) -> torch.Tensor:
        """Run `plan`: one packed forward on the fast path; on the reference path one forward per
        group of `forward_groups` (every sequence's own tokens are computed as in one forward).
        Returns the `(len(plan.sample_rows), vocab)` logits, in `sample_rows` order."""
        groups = [list(range(len(plan.query_lens)))] if plan.fast else forward_groups(plan.query_lens)
        if len(groups) == 1:
            return self._forward(plan)
        starts = list(itertools.accumulate(plan.query_lens, initial=0))
        rank = {row: i for i, row in enumerate(plan.sample_rows)}
        parts: list[torch.Tensor] = []
        order: list[int] = []  # each part's rows, as positions in sample_rows
        for rows in groups:
            sub = StepPlan(fast=plan.fast)
            for row in rows:
                sub.token_ids.extend(plan.token_ids[starts[row] : starts[row + 1]])
                sub.query_lens.append(plan.query_lens[row])
                sub.context_lens.append(plan.context_lens[row])
                sub.slots.append(plan.slots[row])
                sub.block_tables.append(plan.block_tables[row])
                if row in rank:
                    sub.sample_rows.append(row)
                    sub.logits_indices.append(len(sub.token_ids) - 1)
                    order.append(rank[row])
            parts.append(self._forward(sub))  # (len(sub.sample_rows), vocab), maybe empty
        stacked = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return stacked[inverse.to(stacked.device)]

    def _forward(self, plan: StepPlan, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One packed forward of `plan` (its tokens `token_ids` when given, already on the
        device); the `(len(plan.sample_rows), vocab)` logits."""
        device = self.model.device
        batch = ForwardBatch.build(
            plan.query_lens,
            plan.context_lens,
            plan.slots,
            device=device,
            block_tables=plan.block_tables,
            block_size=self.cache.block_size,
            paged_kernels=plan.fast,
        )
        return self.model.forward_packed(
            torch.tensor(plan.token_ids, device=device) if token_ids is None else token_ids,
            batch,
            self.cache,
            logits_indices=torch.tensor(plan.logits_indices, dtype=torch.long, device=device),
        )

    def _graph_step(self, step: SchedulerOutput) -> bool:
        """Whether `step` replays a captured graph: graphs on, the fast path on, and every
        sequence running exactly its newest token after a cached past (a decode step)."""
        if self.graphs is None or self.graphs.padded_size(len(step.scheduled)) is None:
            return False
        for item in step.scheduled:
            seq = item.seq
            if (
                item.num_tokens != 1
                or seq.num_computed_tokens != seq.num_tokens - 1
                or seq.num_computed_tokens == 0
            ):
                return False
        return self.uses_fast_path()
