"""Decode steps replayed from CUDA graphs.

A decode step runs one token per sequence through every layer: on the engine's fast path that is
about fifteen kernel launches a layer, and at small batches the host time to issue them (Python,
the PyTorch dispatcher, Triton's launcher) is longer than the GPU time they take. Capturing the
step once per padded batch size and replaying it turns that into one launch.

What makes a step capturable (and is kept so by the kernels): nothing reads a device value on the
host; every shape is fixed by the batch size alone. The per-step inputs (token ids, where each
new key goes, sequence lengths, state slots, block tables) are copied into static device buffers
before the replay, through one pinned host buffer; of the block tables, only the rows whose
table changed since the last step (`TableRows`). A batch of `n` sequences replays the graph of
the smallest captured size `>= n`; the padding rows have state slot -1 (the Mamba kernels skip
them), length 0 (attention writes zeros) and store their key and value in the cache's scratch row.
The attention kernel splits each sequence's keys by its own length, so a graph captured with the
engine's longest context as the bound serves every length.

Graphs are captured lazily, the first time a batch size is needed, and share one memory pool
(they never run at the same time).
"""

from __future__ import annotations

import torch

from jamba_runtime.cache.batch import ForwardBatch, PagedKernelArgs
from jamba_runtime.cache.paged import PagedHybridCache
from jamba_runtime.model.modeling import JambaForCausalLM, JambaSparseMoeBlock
from jamba_runtime.model.tp_layers import ExpertParallelMoe


def capture_blocker(model: JambaForCausalLM) -> str | None:
    """Why a decode step of `model` cannot be captured, or None when it can.

    The MoE layers must take a grouped path (`fused_moe` on stacked bf16 experts, or
    `fused_moe_int8` on stacked int8 ones): the reference expert loop reads which experts were
    chosen on the host, which capture forbids.
    """
    moe = [m for m in model.modules() if isinstance(m, JambaSparseMoeBlock)]
    parallel = [m for m in model.modules() if isinstance(m, ExpertParallelMoe)]
    if not moe and not parallel:
        return None
    if model.dtype != torch.bfloat16:
        return f"the MoE layers' grouped matmul runs in bfloat16 only on CUDA (the model is {model.dtype})"
    if any(m.stacked_experts() is None and m.stacked_int8() is None for m in moe):
        return "int8 experts not in the stacked layout run the reference expert loop"
    if not all(m.has_stacks() for m in parallel):
        return "this rank's experts are not in the stacked layout: the reference expert loop runs"
    return None


def capture_sizes(max_batch: int) -> list[int]:
    """Padded batch sizes that get a graph: 1, 2, 4, 8, then every multiple of 8, up to and
    including `max_batch` (vLLM's choice; a batch pads by at most 7 rows past 8)."""
    sizes = [s for s in (1, 2, 4) if s < max_batch]
    sizes += list(range(8, max_batch, 8))
    return sorted({*sizes, max_batch})


class TableRows:
    """Which rows of the graphs' device block tables a step must write.

    A sequence's block table only grows by appends while it holds it, and is otherwise replaced by
    a new list (`CacheManager`), so a row given the same list object at the same length as last
    time already holds it on the device. A decode batch of 64 then rewrites the few rows that
    took a new block this step (one per `block_size` tokens each) instead of all 64 tables. The
    lists are kept referenced so that their ids cannot be reused by other lists.

    Example:
        >>> rows = TableRows(4)
        >>> a, b = [3], [5, 6]
        >>> rows.changed([a, b]), rows.changed([a, b])
        ([0, 1], [])
        >>> a.append(9)
        >>> rows.changed([a, b]), rows.changed([b, a])
        ([0], [0, 1])
    """

    def __init__(self, max_rows: int) -> None:
        self._lists: list[list[int] | None] = [None] * max_rows
        self._lens = [0] * max_rows

    def changed(self, tables: list[list[int]]) -> list[int]:
        """The rows (ascending) whose table differs from what was written there last; they are
        taken as written."""
        out = []
        for i, t in enumerate(tables):
            if self._lists[i] is not t or self._lens[i] != len(t):
                out.append(i)
                self._lists[i] = t
                self._lens[i] = len(t)
        return out


class DecodeGraphs:
    """Captured decode steps for one model and paged cache.

    Example:
        >>> graphs = DecodeGraphs(model, cache, max_batch=64, max_seq_len=8192)
        >>> logits = graphs.run(tokens, slots, seq_lens, block_tables)  # (len(tokens), vocab)
    """

    def __init__(
        self, model: JambaForCausalLM, cache: PagedHybridCache, max_batch: int, max_seq_len: int
    ) -> None:
        assert model.device.type == "cuda", "CUDA graphs need the model on a CUDA device"
        self.model = model
        self.cache = cache
        self.sizes = capture_sizes(max_batch)
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.max_blocks = -(-max_seq_len // cache.block_size)
        dev = model.device
        m = max_batch
        self.tokens = torch.zeros(m, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((m,), cache.scratch_row, dtype=torch.long, device=dev)
        self.seq_lens = torch.zeros(m, dtype=torch.int32, device=dev)
        self.state_indices = torch.full((m,), -1, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros(m, self.max_blocks, dtype=torch.long, device=dev)
        # Staging: [tokens | slot_mapping | seq_lens | state_indices] for the padded batch, then
        # the indices of the rows whose block table changed and those tables, `width` columns each.
        self._stage_len = 4 * m + m + m * self.max_blocks
        self._rows = TableRows(m)
        self._host = torch.zeros(self._stage_len, dtype=torch.long, pin_memory=True)
        self._host_np = self._host.numpy()
        self._dev = torch.zeros(self._stage_len, dtype=torch.long, device=dev)
        self._copied = torch.cuda.Event()
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def padded_size(self, n: int) -> int | None:
        """The captured size a batch of `n` runs as, or None when `n` is above every size."""
        return next((s for s in self.sizes if s >= n), None)

    def capture_all(self) -> int:
        """Capture every size not captured yet (a server's start: no request then pays for a
        capture); returns how many were captured."""
        todo = [s for s in self.sizes if s not in self._graphs]
        for size in todo:
            self._capture(size)
        return len(todo)

    @property
    def captured(self) -> list[int]:
        """Batch sizes captured so far."""
        return sorted(self._graphs)

    def run(
        self,
        tokens: list[int],
        slots: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        device_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decode step: each sequence's newest token, its state slot, its length after this
        token, and its block table (covering that length). Returns `(len(tokens), vocab)` logits,
        a fresh tensor (the graph's own output is overwritten by the next replay).

        `device_tokens`: the newest tokens as a `(len(tokens),)` int64 tensor on the device (the
        last step's samples, not read by the host: `engine/ahead.py`), used in place of `tokens`."""
        n = len(tokens)
        size = self.padded_size(n)
        assert size is not None and n > 0, f"batch of {n} outside the captured sizes {self.sizes}"
        graph, out = self._graphs.get(size) or self._capture(size)
        self._load(tokens, slots, seq_lens, block_tables, size)
        if device_tokens is not None:
            self.tokens[:n].copy_(device_tokens)
        graph.replay()
        return out[:n].clone()

    def _load(
        self, tokens: list[int], slots: list[int], seq_lens: list[int], tables: list[list[int]], size: int
    ) -> None:
        n, bs, scratch = len(tokens), self.cache.block_size, self.cache.scratch_row
        assert max(seq_lens) <= self.max_seq_len
        pad = size - n
        mapping = [t[(s - 1) // bs] * bs + (s - 1) % bs for t, s in zip(tables, seq_lens, strict=True)]
        head = [
            *tokens, *[0] * pad,
            *mapping, *[scratch] * pad,
            *seq_lens, *[0] * pad,
            *slots, *[-1] * pad,
        ]  # fmt: skip
        rows = self._rows.changed(tables)
        width = max((len(tables[r]) for r in rows), default=0)
        assert width <= self.max_blocks
        flat = [b for r in rows for b in (*tables[r], *[0] * (width - len(tables[r])))]
        k = len(rows)
        total = 4 * size + k + k * width
        self._copied.synchronize()  # the previous step's copy has left the pinned buffer
        self._host_np[: 4 * size] = head
        self._host_np[4 * size : 4 * size + k] = rows
        self._host_np[4 * size + k : total] = flat
        self._dev[:total].copy_(self._host[:total], non_blocking=True)
        self._copied.record()
        stage = self._dev[: 4 * size].view(4, size)
        self.tokens[:size].copy_(stage[0])
        self.slot_mapping[:size].copy_(stage[1])
        self.seq_lens[:size].copy_(stage[2])
        self.state_indices[:size].copy_(stage[3])
        if k:
            table_rows = self._dev[4 * size + k : total].view(k, width)
            if rows[-1] == k - 1:  # rows 0..k-1 (a new batch): one slice copy
                self.block_tables[:k, :width].copy_(table_rows)
            else:
                self.block_tables[:, :width].index_copy_(0, self._dev[4 * size : 4 * size + k], table_rows)

    def _batch(self, size: int) -> ForwardBatch:
        """The static layout of a padded decode batch of `size` (views of the static buffers)."""
        dev = self.model.device
        slots = self.state_indices[:size]
        paged = PagedKernelArgs(
            state_indices=slots,
            context_lens=self.seq_lens[:size],  # read by prefill kernels only, never in decode
            seq_lens=self.seq_lens[:size],
            has_initial_state=torch.ones(size, dtype=torch.bool, device=dev),
            max_seq_len=self.max_seq_len,
            decode=True,
        )
        return ForwardBatch(
            query_lens=(1,) * size,
            context_lens=(1,) * size,
            slots=slots,  # the reference path's slot indices; the fast path reads `paged`
            cu_seqlens=torch.arange(size + 1, device=dev),
            token_seq=torch.arange(size, device=dev),
            token_pos=torch.zeros(size, dtype=torch.long, device=dev),
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            paged=paged,
        )

    @torch.inference_mode()
    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # All rows padding while warming up: the warm-up run really executes, and must not
        # advance any sequence's state (capture itself only records).
        self.tokens[:size].zero_()
        self.slot_mapping[:size].fill_(self.cache.scratch_row)
        self.seq_lens[:size].zero_()
        self.state_indices[:size].fill_(-1)
        batch = self._batch(size)
        tokens = self.tokens[:size]
        # Warm up outside the graph on the same buffers (Triton compiles for these shapes, the MoE
        # stacks its experts) on a side stream, as capture requires.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.model.forward_packed(tokens, batch, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.model.forward_packed(tokens, batch, self.cache)
        self._graphs[size] = (graph, out)
        return graph, out
