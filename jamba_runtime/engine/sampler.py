"""Next-token choice over a batch, each row with its own parameters, in a number of ops that does
not grow with the batch.

A token is drawn by inverting the row's cumulative distribution at one uniform number. Unseeded
rows share one draw from the device's default generator. A seeded row's number is a hash of its
seed and its position in the output (`seeded_uniform`), made on the host: its tokens then depend
on neither its batch-mates nor the step it runs in (a recomputed request draws the same), and a
batch of seeded rows costs one copy to the device, not a generator launch per row."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.engine.sequence import Sequence
from jamba_runtime.structured.masks import apply_token_bitmask

logger = logging.getLogger(__name__)

_FLOAT32_MAX = torch.finfo(torch.float32).max


def apply_repetition_penalties(
    logits: torch.Tensor, rows: list[int], seen: list[torch.Tensor], penalties: list[float]
) -> None:
    """In place: in each row `rows[i]` of `logits (batch, vocab)` float32, the tokens `seen[i]`
    get positive logits divided by `penalties[i]` and negative ones multiplied, as transformers
    does. All rows at once (one index per row and seen token, copied to the device in one go, so
    a step pays no copy or ops per penalized row). Results stay finite: a tiny penalty would
    otherwise divide a logit into +inf."""
    counts = torch.tensor([t.numel() for t in seen])
    pairs = torch.stack(
        [
            torch.repeat_interleave(torch.tensor(rows), counts),
            torch.cat(seen).cpu(),
            torch.repeat_interleave(torch.arange(len(rows)), counts),
        ]
    ).to(logits.device, non_blocking=True)
    row, token, which = pairs[0], pairs[1], pairs[2]
    penalty = torch.tensor(penalties, dtype=torch.float64).to(
        logits.device, torch.float32, non_blocking=True
    )[which]
    scores = logits[row, token]
    logits[row, token] = torch.where(scores < 0, scores * penalty, scores / penalty).clamp_(
        -_FLOAT32_MAX, _FLOAT32_MAX
    )


def filter_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p, each row with its own values: filtered-out
    tokens get -inf. `logits (rows, vocab)` float32; a new tensor. A few batched ops whatever the
    number of rows (a filter no row uses is skipped), so a step's host time does not grow with
    its random rows; each row's result is what it gets alone.

    Each row's maximum is subtracted before dividing by its temperature: the distribution is the
    same, and no positive temperature, however small, can overflow it (the top logit becomes 0,
    the others -inf at worst), so softmax never sees inf - inf."""
    vocab = logits.shape[-1]
    top_k = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    # One small host-to-device copy for every per-row value (on CUDA a copy per value would be a
    # launch each); non_blocking: the host does not wait for the step's forward here.
    # Columns: temperature, k, top_p, min_p.
    values = torch.tensor(
        [[p.temperature, k, p.top_p, p.min_p] for p, k in zip(params, top_k, strict=True)],
        dtype=torch.float64,
    ).to(logits.device, torch.float32, non_blocking=True)
    logits = (logits - logits.amax(-1, keepdim=True)) / values[:, 0:1]
    top_p = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if any(top_k):
        kmax = max(top_k)
        best = torch.topk(logits, kmax, dim=-1).values  # each row's kmax largest, in order
        kth = best.gather(1, (values[:, 1:2].long() - 1).clamp_(0, kmax - 1))
        kth = torch.where(values[:, 1:2] > 0, kth, float("-inf"))
        logits = logits.masked_fill(logits < kth, float("-inf"))
        # A row with a top-k takes its top-p over its k largest, already in order: no sort of
        # the vocab (on CPU that sort is most of a 64-row step's sampling).
        within = [i for i in top_p if top_k[i]]
        top_p = [i for i in top_p if not top_k[i]]
        logits = _on_rows(logits, within, torch.cat([values[:, 1:3], best], -1), _top_p_within_k)
    logits = _on_rows(logits, top_p, values[:, 2:3], _top_p)
    logits = _on_rows(logits, [i for i, p in enumerate(params) if p.min_p > 0.0], values[:, 3:4], _min_p)
    return logits


def _on_rows(
    logits: torch.Tensor,
    rows: list[int],
    column: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """`fn(logits, column)` on the rows `rows` only (a filter that sorts the vocab costs its rows
    alone); the others unchanged."""
    if not rows:
        return logits
    if len(rows) == len(logits):
        return fn(logits, column)
    index = torch.tensor(rows).to(logits.device, non_blocking=True)
    return logits.index_copy(0, index, fn(logits[index], column[index]))


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, -1)
    # Drop a token when the tokens before it already reach top_p; the top token always stays
    # (explicitly: a top_p below float32's smallest number compares as 0, which would drop it).
    drop_sorted = (probs.cumsum(-1) - probs) >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _top_p_within_k(logits: torch.Tensor, k_top_p_best: torch.Tensor) -> torch.Tensor:
    """Top-p for rows that keep their k largest logits only: `k_top_p_best` holds each row's k,
    its top_p, then its largest logits in order (at least k of them)."""
    k, top_p, best = k_top_p_best[:, 0:1], k_top_p_best[:, 1:2], k_top_p_best[:, 2:]
    best = best.masked_fill(torch.arange(best.shape[-1], device=best.device) >= k, float("-inf"))
    probs = torch.softmax(best, -1)
    drop = (probs.cumsum(-1) - probs) >= top_p
    drop[:, 0] = False  # the top token always stays
    cut = best.masked_fill(drop, float("inf")).amin(-1, keepdim=True)  # the smallest kept logit
    return logits.masked_fill(logits < cut, float("-inf"))


def _min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, -1)
    return logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function: a well-mixed 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seeded_uniform(seed: int, position: int) -> float:
    """The uniform number in [0, 1) that a request seeded with `seed` draws its token at output
    `position` (0 for its first token) with: 53 bits of a hash of both, so one seed gives the same
    tokens whatever else runs beside it."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ position) >> 11) * 2.0**-53


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    positions: list[int],
    seen_tokens: list[torch.Tensor],
    bitmask: torch.Tensor | None = None,
    mask_rows: list[int] | None = None,
) -> list[int]:
    """Pick one token per row: `sample_on_device`, read by the host."""
    return sample_on_device(logits, params, positions, seen_tokens, bitmask, mask_rows).tolist()


def sample_on_device(
    logits: torch.Tensor,
    params: list[SamplingParams],
    positions: list[int],
    seen_tokens: list[torch.Tensor],
    bitmask: torch.Tensor | None = None,
    mask_rows: list[int] | None = None,
) -> torch.Tensor:
    """Pick one token per row, on the logits' device: nothing here waits for the GPU.

    Args:
        logits: `(batch, vocab)` next-token logits (not modified).
        params, positions, seen_tokens: per row. A seeded row (`params.seed`) draws its token
            with `seeded_uniform(seed, position)`, `positions[i]` being how many tokens its
            request has made so far; random rows without a seed share one draw from the
            device's default generator. `seen_tokens[i]` are the prompt + output ids (for the
            repetition penalty; on the host is best: the penalized rows' ids then reach the
            device in one copy).
        bitmask, mask_rows: structured output: `bitmask[i]` (int32 words, one bit per token) is
            the set of tokens allowed in row `mask_rows[i]`; the others get -inf before any other
            processing, so top-k / top-p / min-p choose among allowed tokens only. Rows not listed
            are untouched.

    Returns:
        `(batch,)` int64: the chosen token id per row, or -1 for a row with no usable distribution
        (NaN logits, or nothing left after masking and filtering): the caller fails that request
        alone.
    """
    logits = logits.float()
    owned = False  # whether `logits` is our copy (the caller's logits give logprobs afterwards)
    if bitmask is not None and mask_rows:
        logits, owned = logits.clone(), True
        apply_token_bitmask(logits, bitmask, mask_rows)
    penalized = [
        i for i, (p, seen) in enumerate(zip(params, seen_tokens, strict=True))
        if p.repetition_penalty != 1.0 and seen.numel() > 0
    ]  # fmt: skip
    if penalized:
        if not owned:
            logits, owned = logits.clone(), True
        apply_repetition_penalties(
            logits,
            penalized,
            [seen_tokens[i] for i in penalized],
            [params[i].repetition_penalty for i in penalized],
        )
    # Every choice stays on the device and the host reads them once at the end: a read per row
    # would stall the host on the GPU once per sequence per step. One reduction gives both the
    # greedy choice and whether a row is usable: its maximum is NaN when it has a NaN (which
    # compares false) and -inf when no token is left.
    top, chosen = logits.max(-1)
    usable = top > float("-inf")
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        every = len(random_rows) == len(params)
        index = None if every else torch.tensor(random_rows).to(logits.device, non_blocking=True)
        rows = logits if index is None else logits[index]
        probs = torch.softmax(filter_logits(rows, [params[i] for i in random_rows]), -1)
        uniforms = [
            None if params[i].seed is None else seeded_uniform(params[i].seed, positions[i])  # type: ignore[arg-type]
            for i in random_rows
        ]
        picked, ok = _inverse_cdf(probs, uniforms)
        if index is None:
            chosen, usable = picked, usable & ok
        else:
            chosen = chosen.index_copy(0, index, picked)
            usable = usable.index_copy(0, index, usable[index] & ok)
    return torch.where(usable, chosen, -1)


def sample_sequences(
    seqs: list[Sequence], logits: torch.Tensor, bitmask: torch.Tensor | None, mask_rows: list[int]
) -> list[int | BaseException]:
    """One token per sequence (row of `logits`) with each one's parameters, output position and
    seen tokens. If sampling the batch raises, each row is sampled alone so that only the rows
    that raise fail (their item is the exception): one request's failure is that request's alone."""
    args = _row_args(seqs)
    try:
        return list(sample(logits, *args, bitmask=bitmask, mask_rows=mask_rows))
    except Exception:  # noqa: BLE001 - narrowed to the rows that raise, below
        logger.exception("sampling the batch failed: sampling its %d rows one at a time", len(seqs))
    tokens: list[int | BaseException] = []
    for row in range(len(seqs)):
        one = [a[row : row + 1] for a in args]
        masked = row in mask_rows
        try:
            tokens.extend(
                sample(
                    logits[row : row + 1],
                    *one,
                    bitmask=bitmask[mask_rows.index(row)].unsqueeze(0)
                    if masked and bitmask is not None
                    else None,
                    mask_rows=[0] if masked else None,
                )
            )
        except Exception as exc:  # noqa: BLE001 - this row's request fails, not the engine
            tokens.append(exc)
    return tokens


def _row_args(seqs: list[Sequence]) -> tuple[list[SamplingParams], list[int], list[torch.Tensor]]:
    """`sample`'s per-row arguments for `seqs`: params, output positions, seen tokens."""
    none = torch.empty(0, dtype=torch.long)  # shared by rows without a penalty
    return (
        [s.params for s in seqs],
        [len(s.output_token_ids) for s in seqs],
        [
            none
            if s.params.repetition_penalty == 1.0
            else torch.tensor(s.all_token_ids(), dtype=torch.long)  # to the device with the others
            for s in seqs
        ],
    )


def sample_sequences_on_device(
    seqs: list[Sequence], logits: torch.Tensor, bitmask: torch.Tensor | None, mask_rows: list[int]
) -> torch.Tensor:
    """One token per sequence as `sample_on_device` gives it (a step whose tokens are read later:
    `engine/ahead.py`). Raises what sampling raises."""
    return sample_on_device(logits, *_row_args(seqs), bitmask=bitmask, mask_rows=mask_rows)


def _inverse_cdf(probs: torch.Tensor, uniforms: list[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of `probs (rows, vocab)`, drawn by inverting the row's cumulative sum at a
    uniform number (batched: a cumsum and a binary search per row, no per-token random draws),
    and whether the row was usable (finite, some mass). A row's number is `uniforms[row]` where
    given (a seeded row: all of them reach the device in one copy), else a shared draw from the
    device's default generator."""
    cum = probs.cumsum(-1)
    total = cum[:, -1:]
    ok = (torch.isfinite(total) & (total > 0)).squeeze(-1)  # a NaN anywhere reaches the total
    given = [x for x in uniforms if x is not None]
    if not given:
        u = torch.rand(total.shape, device=probs.device)
    else:
        # Columns: the given number (0 where none), whether it was given.
        host = torch.tensor([[x or 0.0, x is not None] for x in uniforms], dtype=torch.float64)
        fixed = host.to(probs.device, torch.float32, non_blocking=True)
        u = fixed[:, 0:1]
        if len(given) < len(uniforms):
            u = torch.where(fixed[:, 1:2] > 0, u, torch.rand(total.shape, device=probs.device))
    # The first token whose cumulative sum passes u * total: it has mass (a token with none
    # leaves the sum where it was), and u * total stays below the total even where rounding
    # would reach it.
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    picked = torch.searchsorted(cum, x, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    return picked, ok


def logprobs_of(logits: torch.Tensor, token: int, top_n: int) -> dict:
    """Log-probability of `token` and the `top_n` most likely tokens under `logits (vocab,)`."""
    logp = torch.log_softmax(logits.float(), -1)
    top = torch.topk(logp, top_n) if top_n > 0 else None
    return {
        "token_id": token,
        "logprob": float(logp[token]),
        "top": []
        if top is None
        else [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
    }
