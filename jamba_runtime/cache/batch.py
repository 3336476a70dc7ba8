"""The layout of one forward step: a packed batch of sequences, each with new tokens and a cached past.

Padding choice: the batch is *packed*. Tokens of all sequences sit in one flat `(num_tokens, ...)`
tensor, so no pad token ever enters a projection, the router or the LM head, and sequences of
different lengths cost only their own tokens. The two ops that need a rectangle (attention over the
cached keys, the Mamba conv and scan) pad inside the op with `ForwardBatch.pad` and read back with
`unpad`; the padding there is masked so it never reaches a real token or a saved state. On the
engine's GPU fast path (`paged` set, see docs/runtime.md) nothing is padded: the packed and paged
kernels take the flat tensors with `cu_seqlens` and read state in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PagedKernelArgs:
    """What the packed/paged kernels need beyond `ForwardBatch`, made once per step (not per layer).

    Its presence on a batch (`ForwardBatch.paged`) is the switch that sends the layers to the
    kernels of the engine's paged cache; the runner sets it (`ModelRunner.execute`).

    Attributes:
        state_indices: `(batch,)` int32 state slot of each sequence.
        context_lens: `(batch,)` int32 cached tokens before this step.
        seq_lens: `(batch,)` int32 cached + new tokens.
        has_initial_state: `(batch,)` bool, False for a sequence with nothing cached (its slot may
            hold a previous occupant's state, which must not be read).
        max_seq_len: longest `seq_lens` (a host int: the decode kernel sizes its grid from it).
        decode: every sequence runs one token after a cached past, so the one-token kernels apply.
        fresh_slots: `(n,)` slots of the sequences with nothing cached, None when there are none:
            their SSM state is zeroed before the scan (the scan kernels apply `has_initial_state`
            by multiplying the loaded state by 0, which leaves a NaN a previous occupant left).
    """

    state_indices: torch.Tensor
    context_lens: torch.Tensor
    seq_lens: torch.Tensor
    has_initial_state: torch.Tensor
    max_seq_len: int
    decode: bool
    fresh_slots: torch.Tensor | None = None


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
        paged: set when the layers should call the packed/paged kernels on the paged cache's
            tensors in place (the engine's GPU fast path); None for the reference path.
    """

    query_lens: tuple[int, ...]
    context_lens: tuple[int, ...]
    slots: torch.Tensor
    cu_seqlens: torch.Tensor
    token_seq: torch.Tensor
    token_pos: torch.Tensor
    block_tables: torch.Tensor | None = None
    slot_mapping: torch.Tensor | None = None
    paged: PagedKernelArgs | None = None

    @classmethod
    def build(
        cls,
        query_lens: list[int] | tuple[int, ...],
        context_lens: list[int] | tuple[int, ...] | None = None,
        slots: list[int] | torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        block_tables: list[list[int]] | None = None,
        block_size: int = 0,
        paged_kernels: bool = False,
    ) -> ForwardBatch:
        """Build the layout; `context_lens` defaults to zeros, `slots` to `0..batch-1`.
        With `block_tables` (and `block_size`), also the paged-KV tensors; with `paged_kernels`
        (needs `block_tables`), also `paged`, which turns the layers' fast path on."""
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
        token_seq = torch.repeat_interleave(
            torch.arange(batch, device=device), lens, output_size=sum(query_lens)
        )
        token_pos = torch.arange(sum(query_lens), device=device) - cu[token_seq]  # host sum: no sync
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
        paged = None
        if paged_kernels:
            totals = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
            fresh = [i for i, c in enumerate(context_lens) if c == 0]
            paged = PagedKernelArgs(
                state_indices=slots_t.to(torch.int32),
                context_lens=ctx.to(torch.int32),
                seq_lens=torch.tensor(totals, dtype=torch.int32, device=device),
                has_initial_state=ctx > 0,
                max_seq_len=max(totals),
                decode=all(q == 1 for q in query_lens) and not fresh,
                fresh_slots=slots_t[fresh] if fresh else None,
            )
        return cls(query_lens, context_lens, slots_t, cu, token_seq, token_pos, tables, slot_mapping, paged)

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
