"""Model building for the GPU benches: the Jamba-1.5-Mini config, a layer cut, our model and
transformers' `JambaForCausalLM` on the same (shared) random weights, parameter accounting and the
hardware floors, and the generate loops of each side.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# No network on the device: never let transformers reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from jamba_runtime import ForwardBatch, HybridCache, JambaForCausalLM  # noqa: E402
from jamba_runtime.config import JambaConfig  # noqa: E402
from jamba_runtime.model.dummy_weights import init_tensor  # noqa: E402
from jamba_runtime.model.modeling import empty_model  # noqa: E402

# Jamba-1.5-Mini's config.json (models/jamba-1.5-mini in the project's shared data), all 32 layers;
# --layers cuts it. Layer i is attention when i % 8 == 4, MoE when i % 2 == 1.
MINI_CONFIG: dict[str, Any] = {
    "architectures": ["JambaForCausalLM"],
    "attention_dropout": 0.0,
    "attn_layer_offset": 4,
    "attn_layer_period": 8,
    "bos_token_id": 1,
    "eos_token_id": [2, 518],
    "expert_layer_offset": 1,
    "expert_layer_period": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "mamba_conv_bias": True,
    "mamba_d_conv": 4,
    "mamba_d_state": 16,
    "mamba_dt_rank": 256,
    "mamba_expand": 2,
    "mamba_proj_bias": False,
    "max_position_embeddings": 262144,
    "model_type": "jamba",
    "num_attention_heads": 32,
    "num_experts": 16,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "output_router_logits": False,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "router_aux_loss_coef": 0.001,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_mamba_kernels": True,
    "vocab_size": 65536,
}


# ---- config and weights ---------------------------------------------------------------------------
def cut_config(raw: dict[str, Any], layers: int) -> dict[str, Any]:
    """`raw` with `num_hidden_layers = layers`; raises ValueError unless the cut keeps at least one
    attention layer, one MoE layer and one dense-MLP layer."""
    out = {**raw, "num_hidden_layers": layers}
    ap, ao = raw["attn_layer_period"], raw["attn_layer_offset"]
    ep, eo = raw["expert_layer_period"], raw["expert_layer_offset"]
    attn = [i for i in range(layers) if i % ap == ao]
    moe = [i for i in range(layers) if raw["num_experts"] > 1 and i % ep == eo]
    dense = [i for i in range(layers) if i not in moe]
    if not attn or not moe or not dense:
        need = max(ao + 1, eo + 1, 2)
        raise ValueError(
            f"--layers {layers} keeps attention layers {attn}, MoE layers {moe}, dense layers {dense}: "
            f"use at least {need} layers so the cut has all three"
        )
    return out


def layer_map(cfg: JambaConfig) -> str:
    """E.g. `M-dense M-moe ... A-dense`, one word per layer."""
    return " ".join(
        ("A" if cfg.is_attention_layer(i) else "M") + ("-moe" if cfg.is_moe_layer(i) else "-dense")
        for i in range(cfg.num_hidden_layers)
    )


def _init(
    name: str,
    shape: tuple[int, ...],
    cfg: JambaConfig,
    gen: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One parameter, initialised on `device` as `load_format="dummy"` does (activations O(1));
    Mamba's A_log and D in float32, as the loader keeps them."""
    keep32 = name.endswith(("mamba.A_log", "mamba.D"))
    return init_tensor(name, shape, cfg, gen, device, torch.float32 if keep32 else dtype)


def _set_param(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(tensor, requires_grad=False))


def build_models(
    raw: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[JambaForCausalLM, Any, dict[str, Any]]:
    """Our model and transformers' on the same (shared) random weights; transformers' is None, with
    the reason in the returned info, when it cannot be built or its parameters do not map."""
    cfg = JambaConfig.from_dict(raw, source="bench config")
    info: dict[str, Any] = {}
    hf = None
    try:
        hf_cfg = transformers.JambaConfig(**raw)
        with torch.device("meta"):
            hf = transformers.JambaForCausalLM(hf_cfg)
    except Exception as e:  # noqa: BLE001 - any failure leaves ours to run alone
        info["transformers_error"] = f"building JambaForCausalLM: {e!r}"
        hf = None
    hf_names = {n for n, _ in hf.named_parameters()} if hf is not None else set()
    gen = torch.Generator(device=device).manual_seed(seed)
    ours = empty_model(cfg)
    hf_only: dict[str, torch.Tensor] = {}
    shared: dict[str, torch.Tensor] = {}
    e, h, i = cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
    for layer in cfg.moe_layers:
        pre = f"model.layers.{layer}.feed_forward.experts"
        if hf is not None and f"{pre}.gate_up_proj" not in hf_names:
            continue  # a per-expert transformers layout: same names as ours, shared one by one below
        # Fused as transformers holds them (gate rows first, then up); ours are views of each expert.
        gate_up = torch.randn(e, 2 * i, h, generator=gen, device=device, dtype=dtype).div_(math.sqrt(h))
        down = torch.randn(e, h, i, generator=gen, device=device, dtype=dtype).div_(math.sqrt(i))
        hf_only[f"{pre}.gate_up_proj"], hf_only[f"{pre}.down_proj"] = gate_up, down
        for x in range(e):
            shared[f"{pre}.{x}.gate_proj.weight"] = gate_up[x, :i]
            shared[f"{pre}.{x}.up_proj.weight"] = gate_up[x, i:]
            shared[f"{pre}.{x}.down_proj.weight"] = down[x]
    for name, p in list(ours.named_parameters()):
        t = shared.get(name)
        _set_param(ours, name, t if t is not None else _init(name, tuple(p.shape), cfg, gen, device, dtype))
    if cfg.tie_word_embeddings:
        ours.lm_head.weight = ours.model.embed_tokens.weight
    ours.eval()
    if hf is not None:
        mine = dict(ours.named_parameters(remove_duplicate=False))
        problems = []
        for name, p in list(hf.named_parameters(remove_duplicate=False)):
            t = hf_only.get(name, mine.get(name))
            if t is None or tuple(t.shape) != tuple(p.shape):
                problems.append(f"{name} {list(p.shape)}: ours has {None if t is None else list(t.shape)}")
                continue
            _set_param(hf, name, t)
        left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
        if problems or left:
            info["transformers_error"] = (
                f"parameters that do not map onto ours: {problems[:5]} ({len(problems)}); "
                f"left on the meta device: {left[:5]} ({len(left)})"
            )
            hf = None
        else:
            hf.eval()
            hf.generation_config.eos_token_id = None  # transformers' form of ignore_eos
            info["transformers_attn_implementation"] = getattr(hf.config, "_attn_implementation", None)
            info["transformers_experts_implementation"] = getattr(hf.config, "_experts_implementation", None)
    return ours, hf, info


def accounting(model: JambaForCausalLM, cfg: JambaConfig) -> dict[str, Any]:
    """Parameter and byte counts the floors need."""
    params = dict(model.named_parameters())
    total_bytes = sum(p.numel() * p.element_size() for p in params.values())
    emb = model.model.embed_tokens.weight
    elt = emb.element_size()
    per_expert = 3 * cfg.hidden_size * cfg.intermediate_size
    n_moe = len(cfg.moe_layers)
    # Matmul weights: no norms, A_log, D, conv taps, biases; the embedding is a gather (the LM head counts).
    matmul = sum(
        p.numel() for n, p in params.items() if p.dim() >= 2 and "conv1d" not in n and not n.endswith("A_log")
    )
    if not cfg.tie_word_embeddings:
        matmul -= emb.numel()
    return {
        "total_params": sum(p.numel() for p in params.values()),
        "total_bytes": total_bytes,
        "embedding_bytes": emb.numel() * elt,
        "per_expert_params": per_expert,
        "per_expert_bytes": per_expert * elt,
        "moe_layers": n_moe,
        "active_matmul_params_per_token": matmul
        - n_moe * (cfg.num_experts - cfg.num_experts_per_tok) * per_expert,
        "act_bytes": elt,
    }


def prefill_floor(cfg: JambaConfig, acct: dict[str, Any], p: int, hw: dict[str, Any]) -> float:
    attn = len(cfg.attention_layers) * 4 * cfg.num_attention_heads * cfg.head_dim * p * (p + 1) / 2
    flops = 2 * acct["active_matmul_params_per_token"] * p + attn
    return p / (flops / hw["matmul_flops"])


def decode_step_bytes(cfg: JambaConfig, acct: dict[str, Any], b: int, context: float) -> float:
    e, k = cfg.num_experts, cfg.num_experts_per_tok
    distinct = e * (1 - (1 - k / e) ** b)  # expected experts hit by b tokens routed uniformly
    weights = acct["total_bytes"] - acct["moe_layers"] * (e - distinct) * acct["per_expert_bytes"]
    if not cfg.tie_word_embeddings:
        weights -= acct["embedding_bytes"]
    kv = (
        len(cfg.attention_layers)
        * 2
        * cfg.num_key_value_heads
        * cfg.head_dim
        * context
        * b
        * acct["act_bytes"]
    )
    per_layer = cfg.mamba_d_inner * (cfg.mamba_d_state * 4 + (cfg.mamba_d_conv - 1) * acct["act_bytes"])
    state = 2 * len(cfg.mamba_layers) * per_layer * b  # SSM state float32; read and written
    return weights + kv + state


# ---- the sides ------------------------------------------------------------------------------------
def bench_async_scheduling() -> bool | None:
    """`EngineConfig.async_scheduling` for a bench's engine: False under
    `JAMBA_BENCH_ASYNC_SCHEDULING=off` (an A/B of the steps launched ahead in one run), else the
    engine's own choice."""
    return False if os.environ.get("JAMBA_BENCH_ASYNC_SCHEDULING") == "off" else None


def make_llm(
    model: JambaForCausalLM,
    tokenizer_dir: Path,
    max_batch: int,
    tokens: int,
    max_num_batched_tokens: int | None = None,
    capacity_tokens: int | None = None,
) -> Any:
    """`LLM` over the model already in memory (its constructor loads from disk), with an engine for
    `max_batch` sequences of up to `tokens` tokens each.

    `max_num_batched_tokens`: the per-step token budget (longer prompts prefill in chunks of it);
    default `max(2048, max_batch * tokens)`, so every prompt prefills in one step.
    `capacity_tokens`: KV positions the cache holds in all (default `max_batch * tokens`); raise it
    for one sequence longer than `tokens` (the engine's `max_model_len` is capped by it).
    The cache is sized to these numbers (plus 25%), not to the free memory. The environment's
    `JAMBA_BENCH_ASYNC_SCHEDULING=off` turns the engine's steps launched ahead off (an A/B in one
    run: `engine/ahead.py`); default: the engine's own choice."""
    from jamba_runtime import EngineConfig, LLMEngine, Tokenizer
    from jamba_runtime.cache.paged import block_bytes, slot_bytes
    from jamba_runtime.llm import LLM

    cfg = model.config
    block = 16
    capacity = max(capacity_tokens or 0, max_batch * tokens)
    blocks = capacity // block + 2 * max_batch + 64
    slots = max_batch + 4
    need = blocks * block_bytes(cfg, block, model.dtype) + slots * slot_bytes(cfg, model.dtype)
    engine_cfg = EngineConfig(
        max_num_seqs=max_batch,
        max_num_batched_tokens=max_num_batched_tokens or max(2048, max_batch * tokens),
        block_size=block,
        cache_memory_gb=need * 1.25 / 2**30 + 0.01,
        num_snapshot_slots=4,
        async_scheduling=bench_async_scheduling(),
    )

    class SharedModelLLM(LLM):
        def __init__(self) -> None:  # no super().__init__: it would load a checkpoint
            self.model = model
            self.config = cfg
            self.tokenizer = Tokenizer.from_dir(tokenizer_dir)
            self.engine = LLMEngine(model, self.tokenizer, engine_cfg)

    return SharedModelLLM()


def ours_engine_generate(llm: Any, ids: torch.Tensor, n: int) -> list[list[int]]:
    from jamba_runtime import SamplingParams

    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    return [list(o.token_ids) for o in llm.generate([row.tolist() for row in ids], params)]


@torch.inference_mode()
def ours_plain_generate(model: JambaForCausalLM, ids: torch.Tensor, n: int) -> list[list[int]]:
    """Greedy decode with the model alone: contiguous cache, one `forward_packed` per step."""
    b, p = ids.shape
    dev = ids.device
    cache = HybridCache(model.config, b, p + n, dtype=model.dtype, device=dev)
    batch = ForwardBatch.build([p] * b, device=dev)
    tok = model.forward_packed(ids.reshape(-1), batch, cache, batch.last_token_indices()).argmax(-1)
    out = [tok]
    for step in range(1, n):
        batch = ForwardBatch.build([1] * b, [p + step - 1] * b, device=dev)
        tok = model.forward_packed(tok, batch, cache).argmax(-1)
        out.append(tok)
    return torch.stack(out, 1).tolist()


@torch.inference_mode()
def hf_generate(hf: Any, ids: torch.Tensor, n: int, pad: int) -> list[list[int]]:
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=pad,
    )
    return out[:, ids.shape[1] :].tolist()


def prompts(vocab: int, batch: int, length: int, seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(20, vocab, (batch, length), generator=gen).to(device)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_logits(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    """Relative Frobenius error, max abs difference and argmax agreement, in float32 chunks."""
    a, b = ours.reshape(-1, ours.shape[-1]), theirs.reshape(-1, theirs.shape[-1])
    num = den = max_abs = 0.0
    agree, finite = 0, True
    for s in range(0, a.shape[0], 1024):
        x, y = a[s : s + 1024].float(), b[s : s + 1024].float()
        finite = finite and bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())
        d = x - y
        num += float(d.pow(2).sum())
        den += float(y.pow(2).sum())
        max_abs = max(max_abs, float(d.abs().max()))
        agree += int((x.argmax(-1) == y.argmax(-1)).sum())
    return {
        "logits_rel_err": math.sqrt(num / den) if den > 0 else math.nan,
        "logits_max_abs_diff": max_abs,
        "logits_abs_mean_transformers": math.sqrt(den / b.numel()),
        "argmax_agreement": agree / a.shape[0],
        "logits_finite": finite,
    }
