"""The layout of one forward step: a packed batch of sequences, each with new tokens and a cached past.

Padding choice: the batch is *packed*. Tokens of all sequences sit in one flat `(num_tokens, ...)`
tensor, so no pad token ever enters a projection, the router or the LM head, and sequences of
different lengths cost only their own tokens. The two ops that need a rectangle (attention over the
cached keys, the Mamba conv and scan) pad inside the op with `ForwardBatch.pad` and read back with
`unpad`; the padding there is masked so it never reaches a real token or a saved state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardBatch:
    """Which tokens a forward step runs and where each sequence's cache lives.

    Attributes:
        query_lens: new tokens per sequence in this step.
        context_lens: tokens of each sequence already in the cache (its `num_computed_tokens`).
        slots: `(batch,)` cache row of each sequence (state slot index).
        cu_seqlens: `(batch + 1,)` offsets of each sequence in the flat token tensor.
        token_seq: `(num_tokens,)` sequence index (0..batch-1) of each token.
        token_pos: `(num_tokens,)` index of each token among its sequence's new tokens.
        block_tables: `(batch, max_blocks)` KV block ids per sequence (paged cache only).
        slot_mapping: `(num_tokens,)` flat KV position (`block * block_size + offset`) where each
            new token's key and value go (paged cache only).
    """

    query_lens: tuple[int, ...]
    context_lens: tuple[int, ...]
    slots: torch.Tensor
    cu_seqlens: torch.Tensor
    token_seq: torch.Tensor
    token_pos: torch.Tensor
    block_tables: torch.Tensor | None = None
    slot_mapping: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        query_lens: list[int] | tuple[int, ...],
        context_lens: list[int] | tuple[int, ...] | None = None,
        slots: list[int] | torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        block_tables: list[list[int]] | None = None,
        block_size: int = 0,
    ) -> ForwardBatch:
        """Build the layout; `context_lens` defaults to zeros, `slots` to `0..batch-1`.
        With `block_tables` (and `block_size`), also the paged-KV tensors."""
        query_lens = tuple(int(n) for n in query_lens)
        batch = len(query_lens)
        context_lens = tuple(int(n) for n in (context_lens if context_lens is not None else [0] * batch))
        assert len(context_lens) == batch, "one context length per sequence"
        assert all(n > 0 for n in query_lens), "every sequence in a step runs at least one token"
        device = torch.device(device)
        if slots is None:
            slots_t = torch.arange(batch, device=device)
        else:
            slots_t = torch.as_tensor(slots, dtype=torch.long, device=device)
        lens = torch.tensor(query_lens, dtype=torch.long, device=device)
        cu = torch.zeros(batch + 1, dtype=torch.long, device=device)
        cu[1:] = torch.cumsum(lens, 0)
        token_seq = torch.repeat_interleave(torch.arange(batch, device=device), lens)
        token_pos = torch.arange(int(cu[-1]), device=device) - cu[token_seq]
        if block_tables is None:
            return cls(query_lens, context_lens, slots_t, cu, token_seq, token_pos)
        assert block_size > 0 and len(block_tables) == batch
        width = max(len(t) for t in block_tables)
        tables = torch.tensor(
            [t + [0] * (width - len(t)) for t in block_tables], dtype=torch.long, device=device
        )
        ctx = torch.tensor(context_lens, dtype=torch.long, device=device)
        pos = ctx[token_seq] + token_pos  # absolute position of each new token
        slot_mapping = tables[token_seq, pos // block_size] * block_size + pos % block_size
        return cls(query_lens, context_lens, slots_t, cu, token_seq, token_pos, tables, slot_mapping)

    @property
    def batch_size(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens)

    @property
    def is_uniform(self) -> bool:
        """All sequences run the same number of tokens, so pad/unpad are plain reshapes."""
        return len(set(self.query_lens)) == 1

    def total_lens(self) -> list[int]:
        """Tokens per sequence after this step (cached + new)."""
        return [c + q for c, q in zip(self.context_lens, self.query_lens, strict=True)]

    def last_token_indices(self) -> torch.Tensor:
        """`(batch,)` flat index of each sequence's last new token (where its next-token logits are)."""
        return self.cu_seqlens[1:] - 1

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """`(num_tokens, *rest)` -> `(batch, max_query_len, *rest)`, zeros in the padding."""
        if self.is_uniform:
            return x.view(self.batch_size, self.max_query_len, *x.shape[1:])
        out = x.new_zeros(self.batch_size, self.max_query_len, *x.shape[1:])
        out[self.token_seq, self.token_pos] = x
        return out

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """`(batch, max_query_len, *rest)` -> `(num_tokens, *rest)`."""
        if self.is_uniform:
            return x.reshape(self.num_tokens, *x.shape[2:])
        return x[self.token_seq, self.token_pos]

    def query_mask(self) -> torch.Tensor:
        """`(batch, max_query_len)` bool, True at real tokens."""
        lens = torch.tensor(self.query_lens, device=self.slots.device)
        return torch.arange(self.max_query_len, device=self.slots.device)[None, :] < lens[:, None]
