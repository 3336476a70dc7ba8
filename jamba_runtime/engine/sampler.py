"""Next-token choice over a batch, each row with its own parameters and random generator."""

from __future__ import annotations

import torch

from jamba_runtime.engine.sampling_params import SamplingParams
from jamba_runtime.structured.masks import apply_token_bitmask

_FLOAT32_MAX = torch.finfo(torch.float32).max


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """`logits (vocab,)`; tokens in `seen` get positive logits divided and negative ones multiplied.
    Results stay finite: a tiny penalty would otherwise divide a logit into +inf."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    logits = logits.clone()
    scores = logits[seen]
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    logits[seen] = penalized.clamp(-_FLOAT32_MAX, _FLOAT32_MAX)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p: filtered-out tokens get -inf. `logits (vocab,)` float32.

    The row's maximum is subtracted before dividing by the temperature: the distribution is the
    same, and no positive temperature, however small, can overflow it (the top logit becomes 0,
    the others -inf at worst), so softmax never sees inf - inf."""
    logits = (logits - logits.max()) / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the top token always stays.
        drop_sorted = (cum - torch.softmax(sorted_logits, -1)) >= params.top_p
        # Explicitly: a top_p below float32's smallest number compares as 0, which would drop it.
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0.0:
        probs = torch.softmax(logits, -1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen_tokens: list[torch.Tensor],
    bitmask: torch.Tensor | None = None,
    mask_rows: list[int] | None = None,
) -> list[int]:
    """Pick one token per row.

    Args:
        logits: `(batch, vocab)` next-token logits (not modified).
        params, generators, seen_tokens: per row; a row's generator is its only source of
            randomness, so its tokens do not depend on the other rows. `seen_tokens[i]` are the
            prompt + output ids (for the repetition penalty).
        bitmask, mask_rows: structured output: `bitmask[i]` (int32 words, one bit per token) is
            the set of tokens allowed in row `mask_rows[i]`; the others get -inf before any other
            processing, so top-k / top-p / min-p choose among allowed tokens only. Rows not listed
            are untouched.

    Returns:
        the chosen token id per row, or -1 for a row with no usable distribution (NaN logits,
        or nothing left after masking and filtering): the caller fails that request alone.
    """
    logits = logits.float()
    if bitmask is not None and mask_rows:
        # A copy: the caller's logits still give logprobs of the unmasked distribution.
        logits = logits.clone()
        apply_token_bitmask(logits, bitmask, mask_rows)
    # Every choice stays on the device and the host reads them once at the end: a read per row
    # would stall the host on the GPU once per sequence per step.
    plain = [
        i for i, (p, seen) in enumerate(zip(params, seen_tokens, strict=True))
        if p.greedy and (p.repetition_penalty == 1.0 or seen.numel() == 0)
    ]  # fmt: skip
    # A row is usable when it has no NaN and some token above -inf.
    usable = ~torch.isnan(logits).any(-1) & (logits > float("-inf")).any(-1)
    if len(plain) == len(params):
        return torch.where(usable, torch.argmax(logits, -1), -1).tolist()
    chosen = torch.zeros(len(params), dtype=torch.long, device=logits.device)
    if plain:
        rows = torch.tensor(plain, device=logits.device)
        chosen[rows] = torch.argmax(logits[rows], -1)
    done = set(plain)
    for i, (row, p, gen, seen) in enumerate(zip(logits, params, generators, seen_tokens, strict=True)):
        if i in done:
            continue
        row = apply_repetition_penalty(row, seen, p.repetition_penalty)
        if p.greedy:
            chosen[i] = torch.argmax(row)
            continue
        probs = torch.softmax(filter_logits(row, p), -1)
        ok = torch.isfinite(probs).all() & (probs.sum() > 0)
        usable[i] &= ok
        # multinomial must never see NaN (on CUDA that is a device assert, fatal to the process):
        # an unusable row draws from a uniform stand-in and is reported as -1 below.
        chosen[i] = torch.multinomial(torch.where(ok, probs, 1.0), 1, generator=gen)[0]
    return torch.where(usable, chosen, -1).tolist()


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
