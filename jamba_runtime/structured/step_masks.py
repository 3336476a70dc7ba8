"""A step's grammar token masks, filled on a worker thread while the forward runs.

The masks depend only on the matchers, which are known once the step is scheduled, so the engine
hands them to one worker thread (llguidance releases the GIL) and collects them before sampling:
structured requests do not serialize the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Protocol

import torch

from jamba_runtime.structured.compiler import GrammarCompiler
from jamba_runtime.structured.matcher import GrammarMatcher

StepMasks = tuple[torch.Tensor | None, list[int], set[int]]
"""`(bitmask, rows, broken)`: `bitmask[i]` is the allowed-token mask of sampled row `rows[i]`;
`broken` are rows whose matcher is in error."""


class Constrained(Protocol):
    """What the worker reads of a sampled sequence (the engine's `Sequence` has it)."""

    grammar: GrammarMatcher | None
    output_token_ids: list[int]
    max_new_tokens: int


class MaskWorker:
    """Fills step masks on one worker thread (made on first use).

    Example:
        >>> worker = MaskWorker(lambda: engine.grammars)
        >>> pending = worker.start(samplers)  # None when no sampler is constrained
        >>> bitmask, rows, broken = pending.result() if pending else (None, [], set())
    """

    def __init__(self, grammars: Callable[[], GrammarCompiler]) -> None:
        self._grammars = grammars
        self._thread: futures.ThreadPoolExecutor | None = None

    def start(self, samplers: Sequence[Constrained]) -> futures.Future[StepMasks] | None:
        """Start filling the masks of `samplers` (the step's sampled sequences, in row order);
        None when none of them is constrained. The caller must wait for the future before the
        next step: the worker owns the matchers meanwhile."""
        if not any(s.grammar is not None for s in samplers):
            return None
        if self._thread is None:
            self._thread = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
        return self._thread.submit(self.fill, samplers)

    def fill(self, to_sample: Sequence[Constrained]) -> StepMasks:
        """The masks of this step's constrained rows (see `StepMasks`)."""
        constrained: list[tuple[GrammarMatcher, int, int]] = []
        rows: list[int] = []
        for row, seq in enumerate(to_sample):
            if seq.grammar is None:
                continue
            if seq.grammar.num_accepted != len(seq.output_token_ids):
                # A matcher behind the output (preemption keeps matchers, so this is a guard) is
                # rebuilt by replaying the output.
                seq.grammar.rebuild(seq.output_token_ids)
            remaining = seq.max_new_tokens - len(seq.output_token_ids)
            constrained.append((seq.grammar, len(rows), remaining))
            rows.append(row)
        if not constrained:
            return None, [], set()
        grammars = self._grammars()
        bitmask = grammars.allocate_bitmask(len(rows))
        grammars.fill_bitmasks(constrained, bitmask)
        broken = {rows[i] for i, (m, _, _) in enumerate(constrained) if m.is_error()}
        return bitmask, rows, broken
