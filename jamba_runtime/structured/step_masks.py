"""A step's grammar token masks: llguidance's part on a worker thread while the forward is
launched, the budget logic on the engine's thread while the GPU runs it.

The masks depend only on the matchers, which are known once the step is scheduled, so the engine
hands them to one worker thread, where llguidance computes them outside the GIL. The budget logic
(`GrammarMatcher.prepare`: closing-path rollouts near `max_tokens`) is Python: on the worker it
would hold the GIL against the engine thread while that thread stages inputs and launches kernels
(each launch waits for the GIL, up to the 5 ms switch interval), so it runs on the engine's thread
after the launch, overlapping the GPU's work instead of the host's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Protocol

import torch

from jamba_runtime.structured.compiler import GrammarCompiler
from jamba_runtime.structured.matcher import GrammarMatcher

Rows = list[tuple[GrammarMatcher, int, int]]
"""`(matcher, sampled row, remaining tokens)` of a step's constrained rows; the i-th one's mask is
row i of the step's bitmask."""

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
        >>> # ... launch the forward ...
        >>> bitmask, rows, broken = worker.finish(pending.result()) if pending else (None, [], set())
    """

    def __init__(self, grammars: Callable[[], GrammarCompiler]) -> None:
        self._grammars = grammars
        self._thread: futures.ThreadPoolExecutor | None = None

    def start(self, samplers: Sequence[Constrained]) -> futures.Future[tuple[torch.Tensor, Rows]] | None:
        """Start filling the grammar masks of `samplers` (the step's sampled sequences, in row
        order); None when none of them is constrained. The caller must wait for the future before
        the next step (the worker owns the matchers meanwhile) and pass its result to `finish`."""
        if not any(s.grammar is not None for s in samplers):
            return None
        if self._thread is None:
            self._thread = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
        return self._thread.submit(self.fill, samplers)

    def fill(self, to_sample: Sequence[Constrained]) -> tuple[torch.Tensor, Rows]:
        """The grammar's own masks of this step's constrained rows (llguidance; no budget logic),
        and those rows for `finish`."""
        constrained: Rows = []
        for row, seq in enumerate(to_sample):
            if seq.grammar is None:
                continue
            if seq.grammar.num_accepted != len(seq.output_token_ids):
                # A matcher behind the output (preemption keeps matchers, so this is a guard) is
                # rebuilt by replaying the output.
                seq.grammar.rebuild(seq.output_token_ids)
            remaining = seq.max_new_tokens - len(seq.output_token_ids)
            constrained.append((seq.grammar, row, remaining))
        grammars = self._grammars()
        bitmask = grammars.allocate_bitmask(len(constrained))
        grammars.fill_grammar_masks(
            [(m, i) for i, (m, _, _) in enumerate(constrained) if m.forced_token is None], bitmask
        )
        return bitmask, constrained

    @staticmethod
    def finish(filled: tuple[torch.Tensor, Rows]) -> StepMasks:
        """Apply each row's budget logic to the masks `fill` made (see `StepMasks`); on the
        engine's thread, after the forward is launched."""
        bitmask, constrained = filled
        for i, (m, _, remaining) in enumerate(constrained):
            m.prepare(bitmask, i, remaining, filled=True)
        rows = [row for _, row, _ in constrained]
        broken = {row for m, row, _ in constrained if m.is_error()}
        return bitmask, rows, broken
