"""The Jamba model, top to bottom, in PyTorch.

Every layer works on a packed batch: hidden states are `(num_tokens, hidden)` for all sequences of
a step together, described by a `ForwardBatch`, with state read from and written to a `LayerCache`.
The same layers serve a plain forward (`JambaForCausalLM.forward`), `LLM` generation on the
contiguous `HybridCache`, and the engine's paged cache. Parameter names follow the published
checkpoints (and `transformers`' `JambaForCausalLM.save_pretrained`), so a state dict loads as is.

Two paths, chosen per step by `ForwardBatch.paged` (set by the engine's runner, docs/runtime.md):
the reference path pads inside attention and the Mamba conv/scan and goes through `LayerCache`
(CPU, `LLM` on `HybridCache`, plain forwards); the fast path hands the packed tensors and the paged
cache's tensors to the packed/paged kernels (no KV gather, no padding, state updated in its slot),
fuses each residual add with the next RMSNorm and runs the MoE as two grouped matmuls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from jamba_runtime.cache.batch import ForwardBatch
from jamba_runtime.cache.paged import PagedHybridCache
from jamba_runtime.cache.state import HybridCache, LayerCache
from jamba_runtime.config import JambaConfig
from jamba_runtime.kernels.attention import attention, paged_attention_decode, paged_attention_prefill
from jamba_runtime.kernels.causal_conv1d import causal_conv1d, causal_conv1d_update, causal_conv1d_varlen
from jamba_runtime.kernels.moe import fused_moe, moe_ref
from jamba_runtime.kernels.moe_int8 import fused_moe_int8
from jamba_runtime.kernels.rmsnorm import fused_add_rms_norm, rms_norm
from jamba_runtime.kernels.selective_scan import selective_scan, selective_scan_varlen, selective_state_update
from jamba_runtime.model.expert_layout import stacked_rows_view
from jamba_runtime.model.quantization import Int8Linear, Int8Stack, expert_weights, stacked_int8_view
from jamba_runtime.model.tp_layers import ExpertParallelMoe


class JambaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class JambaAttention(nn.Module):
    """Grouped-query causal attention, no positional encoding."""

    def __init__(self, config: JambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: LayerCache) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        if batch.paged is not None:
            return self.o_proj(self._paged(q, k, v, batch, cache).reshape(n, self.num_heads * self.head_dim))
        k_all, v_all = cache.update_kv(self.layer_idx, k, v, batch)  # (batch, kv_heads, total, head_dim)
        q_pad = batch.pad(q).transpose(1, 2)  # (batch, heads, max_query_len, head_dim)
        ctx = torch.tensor(batch.context_lens, device=x.device)
        out = attention(q_pad, k_all.to(q.dtype), v_all.to(q.dtype), ctx, self.head_dim**-0.5)
        out = batch.unpad(out.transpose(1, 2)).reshape(n, self.num_heads * self.head_dim)
        return self.o_proj(out)

    def _paged(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch, cache: LayerCache
    ) -> torch.Tensor:
        """Fast path: store the new keys/values at `slot_mapping`, attend over the blocks in place.
        Returns `(num_tokens, heads, head_dim)`."""
        p = batch.paged
        assert p is not None and isinstance(cache, PagedHybridCache), "the fast path needs the paged cache"
        assert batch.block_tables is not None and batch.slot_mapping is not None
        kbuf, vbuf = cache.kv_pool(self.layer_idx)
        # Indexed assignment, not index_copy_: it also takes a float8 cache (`kv_cache_dtype="fp8"`).
        kbuf[batch.slot_mapping] = k.to(kbuf.dtype)
        vbuf[batch.slot_mapping] = v.to(vbuf.dtype)
        scale, bs = self.head_dim**-0.5, cache.block_size
        if p.decode:  # one query per sequence: q is (batch, heads, head_dim)
            return paged_attention_decode(
                q, kbuf, vbuf, batch.block_tables, p.seq_lens, bs, scale, p.max_seq_len
            )
        return paged_attention_prefill(
            q,
            kbuf,
            vbuf,
            batch.block_tables,
            batch.cu_seqlens,
            p.context_lens,
            bs,
            scale,
            batch.max_query_len,
            host_lens=(batch.query_lens, batch.context_lens),
        )


class JambaMambaMixer(nn.Module):
    """Mamba v1 selective SSM with Jamba's RMSNorms on dt, B and C."""

    def __init__(self, config: JambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        hidden, d_inner = config.hidden_size, config.mamba_d_inner
        self.d_inner = d_inner
        self.d_state = config.mamba_d_state
        self.dt_rank = config.mamba_dt_rank
        self.in_proj = nn.Linear(hidden, 2 * d_inner, bias=config.mamba_proj_bias)
        # nn.Conv1d only to keep the checkpoint's parameter names and shapes: (d_inner, 1, d_conv).
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, config.mamba_d_conv, groups=d_inner, bias=config.mamba_conv_bias
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(d_inner, -1).contiguous()
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, hidden, bias=config.mamba_proj_bias)
        self.dt_layernorm = JambaRMSNorm(self.dt_rank, config.rms_norm_eps)
        self.b_layernorm = JambaRMSNorm(self.d_state, config.rms_norm_eps)
        self.c_layernorm = JambaRMSNorm(self.d_state, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: LayerCache) -> torch.Tensor:
        if batch.paged is not None:
            return self._paged(x, batch, cache)
        xz = batch.pad(self.in_proj(x))  # (batch, L, 2 * d_inner)
        xs, z = xz.transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, L) each
        conv_state, ssm_state = cache.mamba_state(self.layer_idx, batch)
        query_lens = torch.tensor(batch.query_lens, device=x.device)
        xs, conv_state = causal_conv1d(
            xs, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_state, query_lens
        )
        dt, b, c = torch.split(
            self.x_proj(xs.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], -1
        )
        # Key difference to Mamba: RMSNorms on dt, B and C before the scan.
        dt = F.linear(self.dt_layernorm(dt), self.dt_proj.weight)  # bias is added inside the scan
        b, c = self.b_layernorm(b), self.c_layernorm(c)
        y, ssm_state = selective_scan(
            xs,
            dt.transpose(1, 2),
            -torch.exp(self.A_log.float()),
            b,
            c,
            self.D.float(),
            z,
            self.dt_proj.bias,
            ssm_state,
            batch.query_mask(),
        )
        cache.set_mamba_state(self.layer_idx, batch, conv_state, ssm_state)
        return self.out_proj(batch.unpad(y.transpose(1, 2)).to(x.dtype))

    def _paged(self, x: torch.Tensor, batch: ForwardBatch, cache: LayerCache) -> torch.Tensor:
        """Fast path: conv and scan on the packed `(num_tokens, d_inner)` tensors, each sequence's
        conv window and SSM state read from and written back to its slot in place."""
        p = batch.paged
        assert p is not None and isinstance(cache, PagedHybridCache), "the fast path needs the paged cache"
        conv_states, ssm_states = cache.state_pool(self.layer_idx)
        if p.fresh_slots is not None:
            ssm_states.index_fill_(0, p.fresh_slots, 0.0)  # see PagedKernelArgs.fresh_slots
        xz = self.in_proj(x)  # (num_tokens, 2 * d_inner); x and z are column views of it
        xs, z = xz[:, : self.d_inner], xz[:, self.d_inner :]
        w, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias  # (d_inner, d_conv)
        if p.decode:
            xs = causal_conv1d_update(xs, w, bias, conv_states, p.state_indices)
        else:
            xs = causal_conv1d_varlen(
                xs, w, bias, conv_states, batch.cu_seqlens, p.state_indices, p.has_initial_state,
                batch.max_query_len,
            )  # fmt: skip
        dt, b, c = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], -1)
        dt = F.linear(self.dt_layernorm(dt), self.dt_proj.weight)  # bias is added inside the scan
        b, c = self.b_layernorm(b), self.c_layernorm(c)
        a, d = -torch.exp(self.A_log.float()), self.D.float()
        if p.decode:
            y = selective_state_update(ssm_states, xs, dt, a, b, c, d, z, self.dt_proj.bias, p.state_indices)
        else:
            y = selective_scan_varlen(
                xs, dt, a, b, c, d, z, self.dt_proj.bias, ssm_states, batch.cu_seqlens, p.state_indices,
                p.has_initial_state, batch.max_query_len,
            )  # fmt: skip
        return self.out_proj(y.to(x.dtype))


class JambaMLP(nn.Module):
    """Dense SwiGLU feed-forward (also the shape of one expert)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class JambaSparseMoeBlock(nn.Module):
    """Linear router, softmax, top-k SwiGLU experts (weights not renormalised)."""

    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            JambaMLP(config.hidden_size, config.intermediate_size) for _ in range(config.num_experts)
        )

        # (w13, w2, fingerprint of the per-expert weights they were made from); see `stacked_experts`.
        self._stacked: tuple[torch.Tensor, torch.Tensor, tuple] | None = None

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """`(tokens, hidden)` -> `(tokens, hidden)`. `fused` (the fast path) runs `fused_moe` on the
        stacked weights when the experts are float, `fused_moe_int8` when they are int8 in the
        stacked layout (`quantization.stack_int8_experts`, what the loader leaves); otherwise the
        reference loop over experts."""
        stacked = self.stacked_experts() if fused else None
        if stacked is not None:
            return fused_moe(x, self.router.weight, stacked[0], stacked[1], self.top_k)
        int8 = self.stacked_int8() if fused else None
        if int8 is not None:
            return fused_moe_int8(x, self.router.weight, *int8, self.top_k)
        # Int8 experts (ExpertsInt8) come as lazily dequantized weights, one expert at a time.
        return moe_ref(
            x,
            self.router.weight,
            expert_weights([e.gate_proj for e in self.experts], x.dtype),
            expert_weights([e.up_proj for e in self.experts], x.dtype),
            expert_weights([e.down_proj for e in self.experts], x.dtype),
            self.top_k,
        )

    def stacked_int8(self) -> Int8Stack | None:
        """The int8 experts as `fused_moe_int8` takes them (views, no copy), or None when the
        experts are float or their int8 tensors are not in the stacked layout."""
        return stacked_int8_view(
            [e.gate_proj for e in self.experts], [e.up_proj for e in self.experts],
            [e.down_proj for e in self.experts],
        )  # fmt: skip

    def stacked_experts(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(w13 (experts, 2 * inter, hidden), w2 (experts, hidden, inter))` for `fused_moe`, made
        on first use and kept on the module; None when the experts are int8 (ExpertsInt8).

        When the per-expert weights already sit in one buffer in this layout (e.g. views of a fused
        checkpoint tensor), the stacks are views of it and cost nothing; otherwise they are a copy:
        the layer's expert weights once more (`3 * experts * inter * hidden` values). Remade when
        an expert weight is replaced or written in place."""
        gate = [e.gate_proj for e in self.experts]
        up = [e.up_proj for e in self.experts]
        down = [e.down_proj for e in self.experts]
        if any(isinstance(m, Int8Linear) for m in (*gate, *up, *down)):
            return None
        weights = [m.weight for m in (*gate, *up, *down)]
        key = tuple((w.data_ptr(), w.dtype, _version(w)) for w in weights)
        if self._stacked is None or self._stacked[2] != key:
            g, u, d = weights[: len(gate)], weights[len(gate) : 2 * len(gate)], weights[2 * len(gate) :]
            w13 = stacked_rows_view([[a, b] for a, b in zip(g, u, strict=True)])
            if w13 is None:
                w13 = torch.stack([torch.cat([a, b]) for a, b in zip(g, u, strict=True)])
            w2 = stacked_rows_view([[a] for a in d])
            if w2 is None:
                w2 = torch.stack(d)
            self._stacked = (w13.detach(), w2.detach(), key)
        return self._stacked[0], self._stacked[1]


def _version(t: torch.Tensor) -> int:
    """In-place write counter (inference tensors have none: they cannot be written outside
    inference mode, and the stacks are remade if such a weight is replaced)."""
    try:
        return t._version
    except RuntimeError:
        return -1


class JambaDecoderLayer(nn.Module):
    """Pre-norm block: mixer (attention or Mamba) then feed-forward (dense or MoE), each residual."""

    def __init__(self, config: JambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.is_attention = config.is_attention_layer(layer_idx)
        if self.is_attention:
            self.self_attn = JambaAttention(config, layer_idx)
        else:
            self.mamba = JambaMambaMixer(config, layer_idx)
        self.feed_forward: nn.Module = (
            JambaSparseMoeBlock(config)
            if config.is_moe_layer(layer_idx)
            else JambaMLP(config.hidden_size, config.intermediate_size)
        )
        self.input_layernorm = JambaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_ff_layernorm = JambaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward_fused(
        self,
        h: torch.Tensor,
        residual: torch.Tensor,
        next_norm: JambaRMSNorm,
        batch: ForwardBatch,
        cache: LayerCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast path: `h` is `input_layernorm(residual)` already; each residual add is fused with
        the norm after it. Returns `(next_norm(residual + ...), residual + ...)`."""  # fmt: skip
        h = self.self_attn(h, batch, cache) if self.is_attention else self.mamba(h, batch, cache)
        normed, residual = fused_add_rms_norm(
            h, residual, self.pre_ff_layernorm.weight, self.pre_ff_layernorm.eps
        )
        ff = self.feed_forward
        h = ff(normed, fused=True) if isinstance(ff, (JambaSparseMoeBlock, ExpertParallelMoe)) else ff(normed)
        return fused_add_rms_norm(h, residual, next_norm.weight, next_norm.eps)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: LayerCache) -> torch.Tensor:
        h = self.input_layernorm(x)
        h = self.self_attn(h, batch, cache) if self.is_attention else self.mamba(h, batch, cache)
        x = x + h
        return x + self.feed_forward(self.pre_ff_layernorm(x))


class JambaModel(nn.Module):
    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(JambaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = JambaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, token_ids: torch.Tensor, batch: ForwardBatch, cache: LayerCache) -> torch.Tensor:
        x = self.embed_tokens(token_ids)
        if batch.paged is not None and len(self.layers) > 0:
            h = self.layers[0].input_layernorm(x)
            for i, layer in enumerate(self.layers):
                nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.final_layernorm
                h, x = layer.forward_fused(h, x, nxt, batch, cache)
            return h
        for layer in self.layers:
            x = layer(x, batch, cache)
        return self.final_layernorm(x)


class JambaForCausalLM(nn.Module):
    """Jamba with its LM head.

    Example:
        >>> model = jamba_runtime.load_model("path/to/checkpoint")
        >>> logits = model(torch.tensor([[1, 42, 7]]))  # (batch, seq, vocab)
    """

    def __init__(self, config: JambaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = JambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits `(batch, seq, vocab)` for a rectangular `(batch, seq)` batch with no past."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        bsz, seq = input_ids.shape
        batch = ForwardBatch.build([seq] * bsz, device=input_ids.device)
        cache = HybridCache(self.config, bsz, seq, dtype=self.dtype, device=input_ids.device)
        logits = self.forward_packed(input_ids.reshape(-1), batch, cache)
        return logits.view(bsz, seq, -1)

    @torch.inference_mode()
    def forward_packed(
        self,
        token_ids: torch.Tensor,
        batch: ForwardBatch,
        cache: LayerCache,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run one step over a packed batch and return logits.

        Args:
            token_ids: `(num_tokens,)` new tokens of all sequences, in `batch` order.
            batch: the step's layout; `cache`: where past state is read and new state written.
            logits_indices: flat token positions whose logits are wanted (e.g.
                `batch.last_token_indices()` when only the next token is needed); all when None.

        Returns:
            `(len(logits_indices) or num_tokens, vocab)` float logits in the model dtype.
        """
        hidden = self.model(token_ids, batch, cache)
        if logits_indices is not None:
            hidden = hidden[logits_indices]
        return self.lm_head(hidden)


def empty_model(config: JambaConfig) -> JambaForCausalLM:
    """The model's structure on the meta device: shapes and names, no memory, no init."""
    with torch.device("meta"), _skip_init():
        return JambaForCausalLM(config)


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    # Weights come from the checkpoint, so random init is wasted work; on the meta device
    # `normal_` even pulls in torch's compile stack (~3 s on the first load).
    names = ["normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "trunc_normal_"]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)
