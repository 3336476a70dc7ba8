"""Token bitmasks: `(batch, ceil(vocab/32))` int32, token i allowed when bit i % 32 of word i // 32
is set (llguidance's layout), and how they are applied to logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`(batch, ceil(vocab/32))` int32 bits -> `(batch, vocab_size)` bool, True where allowed."""
    shifts = _SHIFTS.to(bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (batch, words, 32)
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """Set the logits of forbidden tokens to -inf, in place, for the rows `rows` of `logits
    (batch, vocab)`; `bitmask[i]` is the mask of `logits[rows[i]]`. Other rows are untouched."""
    if not rows:
        return
    allowed = unpack_bitmask(bitmask[: len(rows)].to(logits.device, non_blocking=True), logits.shape[-1])
    index = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


# Single bits of a CPU bitmask row. Words are int32, so a word with bit 31 set is stored negative.
def set_bit(bitmask: torch.Tensor, row: int, token: int) -> None:
    """Allow `token` in `bitmask[row]`."""
    word = int(bitmask[row, token // 32]) | (1 << (token % 32))
    bitmask[row, token // 32] = word - (1 << 32) if word >= 1 << 31 else word


def clear_bit(bitmask: torch.Tensor, row: int, token: int) -> None:
    """Forbid `token` in `bitmask[row]`."""
    word = (int(bitmask[row, token // 32]) & 0xFFFFFFFF) & ~(1 << (token % 32))
    bitmask[row, token // 32] = word - (1 << 32) if word >= 1 << 31 else word


def get_bit(bitmask: torch.Tensor, row: int, token: int) -> bool:
    """Whether `bitmask[row]` allows `token`."""
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)
