"""`sample` over a batch whose rows mix greedy, penalized and seeded sampling: each row's token is
the one that row gets alone (the batched greedy path and the per-row path agree)."""

from __future__ import annotations

import torch

from jamba_runtime.sampler import sample
from jamba_runtime.sampling_params import SamplingParams


def _gen(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def test_mixed_rows_equal_each_row_alone() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 300)
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, repetition_penalty=1.3),
        SamplingParams(temperature=0.8, top_k=20, seed=7),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_p=0.9, seed=9),
    ]
    seeds = [None, None, 7, None, 9]
    top = int(logits[1].argmax())
    seen = [torch.empty(0, dtype=torch.long), torch.tensor([top, 3]), torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)]  # fmt: skip
    batched = sample(logits, params, [_gen(s) for s in seeds], seen)
    alone = [sample(logits[i : i + 1], [params[i]], [_gen(seeds[i])], [seen[i]])[0] for i in range(5)]
    assert batched == alone
    assert batched[0] == int(logits[0].argmax()) and batched[3] == int(logits[3].argmax())
    assert batched[1] != top, "the penalty moved row 1 off its seen top token"


def test_all_greedy_rows_take_the_batched_argmax_and_keep_the_callers_logits() -> None:
    logits = torch.randn(4, 50)
    before = logits.clone()
    got = sample(
        logits, [SamplingParams(temperature=0)] * 4, [None] * 4, [torch.empty(0, dtype=torch.long)] * 4
    )
    assert got == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)
