"""`sample` over a batch whose rows mix greedy, penalized and seeded sampling: each row's token is
the one that row gets alone; each row's filters keep what their definitions keep; unseeded and
seeded rows draw with the softmax's probabilities, in a number of ops that does not grow with the
batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jamba_runtime import SamplingParams
from jamba_runtime.engine.sampler import filter_logits, sample, seeded_uniform


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
    top = int(logits[1].argmax())
    seen = [torch.empty(0, dtype=torch.long), torch.tensor([top, 3]), torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)]  # fmt: skip
    positions = [0, 4, 12, 1, 30]
    batched = sample(logits, params, positions, seen)
    alone = [sample(logits[i : i + 1], [params[i]], [positions[i]], [seen[i]])[0] for i in range(5)]
    assert batched == alone
    assert batched[0] == int(logits[0].argmax()) and batched[3] == int(logits[3].argmax())
    assert batched[1] != top, "the penalty moved row 1 off its seen top token"


def test_all_greedy_rows_take_the_batched_argmax_and_keep_the_callers_logits() -> None:
    logits = torch.randn(4, 50)
    before = logits.clone()
    got = sample(logits, [SamplingParams(temperature=0)] * 4, [0] * 4, [torch.empty(0, dtype=torch.long)] * 4)
    assert got == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)


def _none_seen(n: int) -> list[torch.Tensor]:
    return [torch.empty(0, dtype=torch.long)] * n


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1e-39, seed=1),
        SamplingParams(temperature=5e-324, seed=1),
        SamplingParams(temperature=1e-5, seed=1),
        SamplingParams(temperature=1e-4, top_p=1e-46, seed=1),
        SamplingParams(top_p=5e-324, seed=1),
        SamplingParams(top_k=1, min_p=1.0, top_p=1e-30, seed=1),
        SamplingParams(temperature=2.0, repetition_penalty=1e-39, seed=1),
        SamplingParams(temperature=0, repetition_penalty=5e-324),
        SamplingParams(temperature=1e-30, repetition_penalty=1e300, top_p=1e-46, min_p=1.0, seed=1),
    ],
)
def test_extreme_values_always_give_a_token_of_the_vocab(params: SamplingParams) -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 300) * 30
    seen = [torch.tensor([0, 1, int(logits[i].argmax())]) for i in range(4)]
    tokens = sample(logits, [params] * 4, [0, 1, 2, 3], seen)
    assert all(0 <= t < 300 for t in tokens)
    if params.repetition_penalty == 1.0 and params.top_k == 1:
        assert tokens == logits.argmax(-1).tolist()  # top-1 leaves only the argmax


def test_tiny_temperatures_sample_greedily() -> None:
    logits = torch.randn(3, 300)
    for t in (1e-39, 9e-6):
        assert sample(logits, [SamplingParams(temperature=t, seed=2)] * 3, [5] * 3, _none_seen(3)) == (
            logits.argmax(-1).tolist()
        )


def test_unusable_rows_are_minus_one_and_the_others_unaffected() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 300)
    logits[1, 7] = float("nan")  # the model's own NaN
    bitmask = torch.zeros(1, (300 + 31) // 32, dtype=torch.int32)  # row 2: the mask allows nothing
    for temperature in (0.0, 0.9):
        params = [SamplingParams(temperature=temperature, seed=4)] * 4
        got = sample(logits, params, [6] * 4, _none_seen(4), bitmask=bitmask, mask_rows=[2])
        assert got[1] == -1 and got[2] == -1
        for i in (0, 3):
            assert got[i] == sample(logits[i : i + 1], [params[i]], [6], _none_seen(1))[0]


def _kept(logits: torch.Tensor, p: SamplingParams) -> set[int]:
    """The tokens a row keeps, by the definitions (one row, plain Python over sorted probabilities)."""
    scaled = (logits - logits.max()) / p.temperature
    order = sorted(range(len(scaled)), key=lambda t: -float(scaled[t]))
    kept = order[: p.top_k] if p.top_k > 0 else order
    probs = torch.softmax(scaled[kept], -1).tolist()
    if p.top_p < 1.0:
        mass, cut = 0.0, []
        for t, q in zip(kept, probs, strict=True):
            if cut and mass >= p.top_p:
                break
            cut.append(t)
            mass += q
        kept = cut
    if p.min_p > 0:
        probs = torch.softmax(scaled[kept], -1)
        kept = [t for t, q in zip(kept, probs.tolist(), strict=True) if q >= p.min_p * float(probs.max())]
    return set(kept)


def test_each_rows_filters_keep_what_their_definitions_keep() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 200) * 3
    params = [
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=0.5, top_k=40, top_p=0.6),
        SamplingParams(temperature=1.0, min_p=0.1),
        SamplingParams(temperature=2.0, top_k=300, top_p=0.95, min_p=0.02),  # k past the vocab: off
    ]
    filtered = filter_logits(logits, params)
    for i, p in enumerate(params):
        assert set(torch.nonzero(filtered[i] > float("-inf")).flatten().tolist()) == _kept(logits[i], p), i


def test_unseeded_rows_draw_with_the_softmax_probabilities() -> None:
    rows = 40_000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]]).expand(rows, 5).contiguous()
    torch.manual_seed(11)
    tokens = torch.tensor(
        sample(logits, [SamplingParams(temperature=1.0)] * rows, [0] * rows, _none_seen(rows))
    )
    freq = torch.bincount(tokens, minlength=5).double() / rows
    expect = torch.softmax(logits[0].double(), -1)
    sigma = (expect * (1 - expect) / rows).sqrt()
    assert freq[4] == 0, "a token at -inf is never drawn"
    assert torch.all((freq - expect).abs() <= 5 * sigma + 1e-12), (freq, expect)


def test_seeded_rows_draw_with_the_softmax_probabilities_and_repeat_by_seed() -> None:
    """A seeded row's number is a hash of (seed, position): over positions its tokens follow the
    softmax; the same seed and position give the same token alone or beside other rows."""
    rows = 40_000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]]).expand(rows, 5).contiguous()
    params = [SamplingParams(temperature=1.0, seed=i % 7) for i in range(rows)]
    tokens = torch.tensor(sample(logits, params, [i // 7 for i in range(rows)], _none_seen(rows)))
    freq = torch.bincount(tokens, minlength=5).double() / rows
    expect = torch.softmax(logits[0].double(), -1)
    sigma = (expect * (1 - expect) / rows).sqrt()
    assert freq[4] == 0 and torch.all((freq - expect).abs() <= 5 * sigma + 1e-12), (freq, expect)
    # The same (seed, position) alone, in another batch, or with unseeded rows beside it.
    mixed = [SamplingParams(temperature=1.0), params[12], SamplingParams(temperature=1.0, seed=99)]
    again = sample(logits[:3], mixed, [0, 12 // 7, 3], _none_seen(3))
    assert again[1] == tokens[12] == sample(logits[:1], [params[12]], [12 // 7], _none_seen(1))[0]
    uniforms = [seeded_uniform(s, p) for s in (0, 1, -5, 2**63) for p in range(100)]
    assert len(set(uniforms)) == 400 and all(0.0 <= u < 1.0 for u in uniforms)


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05),
        SamplingParams(temperature=0.9, seed=3),
        SamplingParams(temperature=0.7, top_k=50, top_p=0.9, seed=3),
    ],
)
def test_rows_cost_the_same_ops_at_any_batch(params: SamplingParams) -> None:
    """On a GPU every op is a kernel launch the host pays for: a step's sampling must not launch
    a few ops per row (the row-by-row loop launched about 22 per random row, and a seeded row's
    own generator 2 more)."""
    counts = []
    for batch in (2, 33):
        logits = torch.randn(batch, 500)
        with _Ops() as ops:
            sample(logits, [params] * batch, list(range(batch)), _none_seen(batch))
        counts.append(ops.count)
    assert counts[0] == counts[1], counts


def test_repetition_penalties_of_many_rows_at_once() -> None:
    """Each penalized row's seen tokens (repeats included) are divided (positive) or multiplied
    (negative) by its own penalty; other tokens and rows, and the caller's logits, are untouched;
    the ops do not grow with the penalized rows."""
    torch.manual_seed(2)
    logits = torch.randn(5, 40)
    before = logits.clone()
    seen = [torch.tensor([3, 3, 7, 11]), torch.empty(0, dtype=torch.long), torch.tensor([0, 39])]
    seen += [torch.tensor([5]), torch.tensor([1, 2])]
    penalties = [1.5, 2.0, 0.5, 1.0, 3.0]  # row 1 sees nothing, row 3 has no penalty
    params = [SamplingParams(temperature=0, repetition_penalty=p) for p in penalties]
    with _Ops() as ops:
        tokens = sample(logits, params, [0] * 5, seen)
    assert torch.equal(logits, before)
    expect = logits.clone()
    for row, (toks, p) in enumerate(zip(seen, penalties, strict=True)):
        for t in set(toks.tolist()):
            v = expect[row, t]
            expect[row, t] = v * p if v < 0 else v / p
    assert tokens == expect.argmax(-1).tolist()
    more = torch.randn(40, 40)
    with _Ops() as more_ops:
        sample(more, [SamplingParams(temperature=0, repetition_penalty=1.2)] * 40, [0] * 40, [seen[0]] * 40)
    assert more_ops.count == ops.count
