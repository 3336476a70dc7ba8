"""Prefill and decode speed of our runtime vs transformers' `JambaForCausalLM` on one GPU, bf16, at the
Jamba-1.5-Mini shape cut to a few layers, side by side, with the hardware floor of every row.

    python bench/runtime_gpu.py                          # ~5 min on an H100: 8 layers, P=2048 (+8192), b=1/16/64
    python bench/runtime_gpu.py --quick                  # ~1 min: P=1024, decode b=1/16, N=32
    python bench/runtime_gpu.py --config path/config.json --layers 16
    python bench/runtime_gpu.py --device cpu --quick     # the same code on CPU: tiny shape, float32

Both models hold the same random weights, made on the device from a fixed seed (no checkpoint: the
8-layer cut is ~27 GB in bf16). They share the tensors: transformers keeps each MoE layer's experts
fused (`experts.gate_up_proj (E, 2I, H)`, `experts.down_proj (E, H, I)`), and our per-expert
`gate_proj` / `up_proj` / `down_proj` weights are views into those, so the pair costs one model's
memory. Every other parameter has the same name on both sides and is the same tensor.

Method (also stored in the JSON):
  prefill  one batch-1 forward over P tokens with full logits: ours `model(ids)`, transformers
           `model(input_ids=ids).logits`, under `torch.inference_mode()`; CUDA events around each
           call, median of repeats, the sides alternating call by call after a warm-up. The warm-up
           calls also give the logits compared (relative Frobenius error, max abs, argmax agreement).
  decode   greedy, N new tokens per sequence after a Pd-token prompt, batch b. Ours: `LLM.generate`
           (engine: scheduler, paged KV, sampler; `ignore_eos=True`) and, as "ours plain", a loop of
           `forward_packed` on the contiguous `HybridCache` with argmax; transformers: `generate`
           with `eos_token_id` cleared, `min_new_tokens=N`, `do_sample=False`. A forward hook on each
           side's `lm_head` records a CUDA event per step; decode time runs from the step that
           yields token 1 to the step that yields token N (N - 1 steps, host work included).
           tokens/s = b * (N - 1) / median decode time; ms/step = decode time / (N - 1).
  floors   decode: bytes read per step (every weight but the embedding and the experts no token
           routed to, with the expected distinct experts for b uniform tokens; KV at context
           Pd + N/2; Mamba conv + SSM state read and written) / measured copy bandwidth.
           prefill: matmul FLOPs (2 x active matmul params x P, LM head included, + causal
           attention) / measured bf16 matmul rate. Scan and other elementwise work are not counted.

A row that fails (OOM, an API difference) is recorded and the others still run; the JSON is
rewritten after every row (`$OUT/runtime_gpu.json` when OUT is set, else bench/results/). Exit
status 1 only when no row measured anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# No network on the device: never let transformers reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import transformers  # noqa: E402

from jamba_runtime.batch import ForwardBatch  # noqa: E402
from jamba_runtime.cache import HybridCache  # noqa: E402
from jamba_runtime.config import JambaConfig  # noqa: E402
from jamba_runtime.loader import empty_model  # noqa: E402
from jamba_runtime.model import JambaForCausalLM  # noqa: E402
from jamba_runtime.tiny import TINY_CONFIG  # noqa: E402
from jamba_runtime.tiny_tokenizer import tiny_model_token_ids, write_tiny_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()

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

METHOD = {
    "prefill": "P / median time of one batch-1 forward over P tokens (full logits), CUDA events; sides alternate after a warm-up",
    "decode": (
        "b * (N - 1) / median decode time; decode time from the LM-head call that yields token 1 to the one "
        "that yields token N (CUDA events recorded by forward hooks); greedy, eos ignored"
    ),
    "floor_prefill": "(2 x active matmul params x P + causal attention FLOPs) / measured bf16 matmul rate",
    "floor_decode": (
        "b / (bytes read per step: weights but embedding and unrouted experts (expected distinct experts "
        "for b tokens), KV at context Pd + N/2, Mamba state read + written) / measured copy bandwidth)"
    ),
    "logits_rel_err": "|ours - transformers|_F / |transformers|_F over the prefill logits, float32 accumulation",
}

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - START


# ---- timing ---------------------------------------------------------------------------------------
class Clock:
    """Marks on the device's timeline: CUDA events (recorded on the current stream), or
    `perf_counter` on CPU. `seconds(a, b)` waits for `b` before reading."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a: Any, b: Any) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        a = self.mark()
        fn()
        b = self.mark()
        return self.seconds(a, b)


def _matmul_seconds(clock: Clock, n: int, device: torch.device, dtype: torch.dtype, reps: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    return statistics.median(clock.time(lambda: torch.matmul(a, b)) for _ in range(reps))


def _copy_seconds(clock: Clock, nbytes: int, device: torch.device, reps: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    return statistics.median(clock.time(lambda: dst.copy_(src)) for _ in range(reps))


def measure_hardware(device: torch.device, dtype: torch.dtype, quick: bool) -> dict[str, Any]:
    """Matmul rate in `dtype` (n x n x n) and copy bandwidth (bytes read + written per second)."""
    clock = Clock(device)
    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    reps = 10 if cuda else 3
    t_mm = _matmul_seconds(clock, n, device, dtype, reps)
    nbytes = (1 << 30 if quick else 2 << 30) if cuda else 64 << 20
    t_cp = _copy_seconds(clock, nbytes, device, reps)
    free_memory()
    return {
        "matmul_flops": 2 * n**3 / t_mm,
        "matmul_n": n,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "copy_bandwidth_bytes_s": 2 * nbytes / t_cp,
        "copy_bytes": nbytes,
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
    """One parameter, initialised on `device` with the scales of `jamba_runtime.tiny` (activations O(1))."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, device=device, dtype=dtype)
    if name.endswith("mamba.A_log"):  # float32, as the loader keeps it
        a = torch.arange(1, cfg.mamba_d_state + 1, dtype=torch.float32, device=device)
        return torch.log(a).expand(shape).contiguous()
    if name.endswith("mamba.D"):
        return torch.ones(shape, device=device, dtype=torch.float32)
    if name.endswith("dt_proj.bias"):  # dt log-uniform in [1e-3, 1e-1], stored as softplus^-1(dt)
        u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
        dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        return (dt + torch.log(-torch.expm1(-dt))).to(dtype)
    if name.endswith("conv1d.bias"):
        return torch.zeros(shape, device=device, dtype=dtype)
    t = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    if name == "model.embed_tokens.weight":
        return t
    fan_in = shape[-1] if len(shape) == 2 else math.prod(shape[1:])
    return t.div_(math.sqrt(fan_in))


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
def make_llm(model: JambaForCausalLM, tokenizer_dir: Path, max_batch: int, tokens: int) -> Any:
    """`LLM` over the model already in memory (its constructor loads from disk), with an engine sized
    for `max_batch` sequences of `tokens` tokens whose prompts all prefill in one step."""
    from jamba_runtime.engine import EngineConfig, LLMEngine
    from jamba_runtime.llm import LLM
    from jamba_runtime.paged_cache import block_bytes, slot_bytes
    from jamba_runtime.tokenizer import Tokenizer

    cfg = model.config
    block = 16
    blocks = max_batch * (tokens // block + 2) + 64
    slots = max_batch + 4
    need = blocks * block_bytes(cfg, block, model.dtype) + slots * slot_bytes(cfg, model.dtype)
    engine_cfg = EngineConfig(
        max_num_seqs=max_batch,
        max_num_batched_tokens=max(2048, max_batch * tokens),
        block_size=block,
        cache_memory_gb=need * 1.25 / 2**30 + 0.01,
        num_snapshot_slots=4,
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


def timed_generate(
    clock: Clock,
    lm_head: torch.nn.Module,
    gen: Callable[[torch.Tensor, int], list[list[int]]],
    ids: torch.Tensor,
    n: int,
) -> tuple[float, float, list[list[int]], int]:
    """(time to first token, decode time of N - 1 steps, tokens, LM-head calls); each step ends in one
    LM-head call. More than N calls means the prompts took several steps (chunked prefill)."""
    marks: list[Any] = []
    handle = lm_head.register_forward_hook(lambda *_: marks.append(clock.mark()))
    try:
        t0 = clock.mark()
        tokens = gen(ids, n)
    finally:
        handle.remove()
    clock.sync()
    if len(marks) < n or any(len(t) != n for t in tokens):
        raise RuntimeError(
            f"{len(marks)} LM-head calls and lengths {sorted({len(t) for t in tokens})} for n={n}"
        )
    return clock.seconds(t0, marks[-n]), clock.seconds(marks[-n], marks[-1]), tokens, len(marks)


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


def short_error(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}"[:600] + " | " + "".join(tb[-3:])[-900:]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


# ---- the bench ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, out: Path) -> None:
        self.args, self.device, self.dtype, self.out = args, device, dtype, out
        self.clock = Clock(device)
        self.rows: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []
        self.hw: dict[str, Any] = {}
        self.model_info: dict[str, Any] = {}
        self.ours: JambaForCausalLM | None = None
        self.hf: Any = None
        self.llm: Any = None
        self.cfg: JambaConfig | None = None
        self.acct: dict[str, Any] = {}
        self.table = ""
        self.tok_dir: Path | None = None

    # -- bookkeeping
    def peak_gib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return None

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run `fn`, record its wall time and peak memory; a failure is recorded and returns None."""
        self.reset_peak()
        t0 = time.perf_counter()
        log(f"{name} ...")
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - record and go on
            self.failures.append({"phase": name, "error": short_error(e)})
            log(f"{name} FAILED: {type(e).__name__}: {str(e)[:300]}")
            free_memory()
            return None
        finally:
            rec = {"phase": name, "seconds": time.perf_counter() - t0, "peak_gib": self.peak_gib()}
            self.phases.append(rec)
            peak = f", peak {rec['peak_gib']:.1f} GiB" if rec["peak_gib"] is not None else ""
            log(f"{name} done in {rec['seconds']:.1f}s{peak}")
            self.save()

    def save(self) -> None:
        args = self.args
        result = {
            "bench": "runtime_gpu",
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "dtype": str(self.dtype).removeprefix("torch."),
            "hardware": {**self.hw, **device_info(self.device)},
            "software": software_info(),
            "model": self.model_info,
            "method": METHOD,
            "rows": self.rows,
            "phases": self.phases,
            "failures": self.failures,
            "table": self.table,
            "elapsed_s": elapsed(),
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out)

    # -- setup
    def setup(self, raw: dict[str, Any]) -> bool:
        args = self.args
        hw = self.phase("hardware probe", lambda: measure_hardware(self.device, self.dtype, args.quick))
        if hw is None:  # floors need it; keep going with the DESIGN numbers of an H100
            hw = {"matmul_flops": 750e12, "copy_bandwidth_bytes_s": 2.97e12, "assumed": True}
        self.hw = hw
        log(
            f"hardware: {self.dtype} matmul {hw['matmul_flops'] / 1e12:.3g} TFLOP/s, copy bandwidth "
            f"{hw['copy_bandwidth_bytes_s'] / 1e9:,.0f} GB/s"
        )
        built = self.phase("build models", lambda: build_models(raw, self.device, self.dtype, args.seed))
        if built is None:
            return False
        self.ours, self.hf, info = built
        self.cfg = self.ours.config
        self.acct = accounting(self.ours, self.cfg)
        self.model_info = {
            "config": self.cfg.to_dict(),
            "layers": layer_map(self.cfg),
            "accounting": self.acct,
            **info,
        }
        if self.hf is None:
            self.failures.append(
                {"phase": "build transformers", "error": info.get("transformers_error", "?")}
            )
        log(
            f"model: {self.cfg.num_hidden_layers} layers [{self.model_info['layers']}], "
            f"{self.acct['total_params'] / 1e9:.2f}B params, {self.acct['total_bytes'] / 2**30:.1f} GiB (shared "
            f"with transformers), active matmul params/token {self.acct['active_matmul_params_per_token'] / 1e9:.2f}B; "
            f"transformers: {'attn ' + str(info.get('transformers_attn_implementation')) + ', experts ' + str(info.get('transformers_experts_implementation')) if self.hf is not None else info.get('transformers_error')}"
        )
        if args.decode_batches:
            tokens = args.decode_prompt_len + args.new_tokens + 16
            self.llm = self.phase("engine (LLM over the shared model)", lambda: self._make_llm(tokens))
        return True

    def _make_llm(self, tokens: int) -> Any:
        assert self.ours is not None and self.cfg is not None
        self.tok_dir = Path(tempfile.mkdtemp(prefix="jamba-bench-tok-"))
        # The engine detokenises its output: any tokenizer with the model's vocab size will do.
        write_tiny_tokenizer(self.tok_dir, vocab_size=self.cfg.vocab_size)
        return make_llm(self.ours, self.tok_dir, max(self.args.decode_batches), tokens)

    # -- rows
    def run_row(self, metric: str, fn: Callable[[], dict[str, Any]]) -> None:
        self.reset_peak()
        t0 = time.perf_counter()
        log(f"{metric} ...")
        try:
            row = fn()
        except Exception as e:  # noqa: BLE001 - record and go on
            row = {"metric": metric, "errors": {"row": short_error(e)}}
        row["seconds"] = time.perf_counter() - t0
        row["peak_gib"] = self.peak_gib()
        self.rows.append(row)
        for side, err in row.get("errors", {}).items():
            self.failures.append({"phase": metric, "side": side, "error": err})
            log(f"  {side} FAILED: {err[:300]}")
        free_memory()
        log(f"{metric}: {summary(row)} ({row['seconds']:.1f}s, peak {fmt(row['peak_gib'], '.1f')} GiB)")
        self.save()

    def prefill_row(self, p: int) -> dict[str, Any]:
        assert self.ours is not None and self.cfg is not None
        ours, hf = self.ours, self.hf
        ids = prompts(self.cfg.vocab_size, 1, p, seed=100 + p, device=self.device)
        sides: dict[str, Callable[[], Any]] = {"ours": lambda: ours(ids)}
        if hf is not None:
            sides["transformers"] = lambda: hf(input_ids=ids).logits
        row: dict[str, Any] = {"metric": f"prefill b=1 P={p}", "kind": "prefill", "batch": 1, "prompt_len": p}
        errors: dict[str, str] = {}
        logits: dict[str, torch.Tensor] = {}
        for side, fn in list(sides.items()):  # warm-up, and the logits compared
            try:
                with torch.inference_mode():
                    logits[side] = fn()
                self.clock.sync()
            except Exception as e:  # noqa: BLE001
                errors[side] = short_error(e)
                del sides[side]
                free_memory()
        if len(logits) == 2:
            row.update(compare_logits(logits["ours"], logits["transformers"]))
        elif "ours" in logits:
            row["logits_finite"] = bool(torch.isfinite(logits["ours"]).all())
        logits.clear()
        free_memory()
        times: dict[str, list[float]] = {s: [] for s in sides}
        for _ in range(self.args.prefill_repeats):
            for side, fn in list(sides.items()):
                try:
                    with torch.inference_mode():
                        times[side].append(self.clock.time(fn))
                except Exception as e:  # noqa: BLE001
                    errors[side] = short_error(e)
                    del sides[side]
                    free_memory()
        for side, ts in times.items():
            if ts:
                t = statistics.median(ts)
                row[side] = {"tokens_per_s": p / t, "ms": 1e3 * t, "times_s": ts}
        row["floor_tokens_per_s"] = prefill_floor(self.cfg, self.acct, p, self.hw)
        row["floor_ms"] = 1e3 * p / row["floor_tokens_per_s"]
        row["errors"] = errors
        return row

    def decode_row(self, b: int) -> dict[str, Any]:
        assert self.ours is not None and self.cfg is not None
        ours, hf, llm, args = self.ours, self.hf, self.llm, self.args
        n, pd = args.new_tokens, args.decode_prompt_len
        ids = prompts(self.cfg.vocab_size, b, pd, seed=200 + b, device=self.device)
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        sides: dict[str, tuple[torch.nn.Module, Callable[[torch.Tensor, int], list[list[int]]]]] = {}
        if llm is not None:
            sides["ours"] = (ours.lm_head, lambda x, k: ours_engine_generate(llm, x, k))
        if not args.no_plain:
            sides["ours_plain"] = (ours.lm_head, lambda x, k: ours_plain_generate(ours, x, k))
        if hf is not None:
            sides["transformers"] = (hf.lm_head, lambda x, k: hf_generate(hf, x, k, pad))
        row: dict[str, Any] = {
            "metric": f"decode b={b} Pd={pd} N={n}",
            "kind": "decode",
            "batch": b,
            "prompt_len": pd,
            "new_tokens": n,
        }
        errors: dict[str, str] = {}
        for side, (_, gen) in list(sides.items()):  # warm-up: compiles, allocator, cuBLAS heuristics
            try:
                gen(ids, min(n, 16))
                self.clock.sync()
            except Exception as e:  # noqa: BLE001
                errors[side] = short_error(e)
                del sides[side]
                free_memory()
        log("  warm-up done: " + ", ".join(sides) + (f"; failed: {', '.join(errors)}" if errors else ""))
        runs: dict[str, list[tuple[float, float, list[list[int]], int]]] = {s: [] for s in sides}
        for _ in range(args.repeats):
            for side, (head, gen) in list(sides.items()):
                try:
                    runs[side].append(timed_generate(self.clock, head, gen, ids, n))
                except Exception as e:  # noqa: BLE001
                    errors[side] = short_error(e)
                    del sides[side]
                    free_memory()
        tokens: dict[str, list[list[int]]] = {}
        for side, rs in runs.items():
            if not rs:
                continue
            d = statistics.median(r[1] for r in rs)
            row[side] = {
                "tokens_per_s": b * (n - 1) / d,
                "ms_per_step": 1e3 * d / (n - 1),
                "ttft_s": statistics.median(r[0] for r in rs),
                "decode_s": [r[1] for r in rs],
                "lm_head_calls": rs[-1][3],
            }
            tokens[side] = rs[-1][2]
        for x, y in [("ours", "transformers"), ("ours", "ours_plain"), ("ours_plain", "transformers")]:
            if x in tokens and y in tokens:
                prefix = [common_prefix(s, t) for s, t in zip(tokens[x], tokens[y])]
                row[f"greedy_{x}_vs_{y}"] = {
                    "identical": tokens[x] == tokens[y],
                    "min_agreeing_prefix": min(prefix),
                    "mean_agreeing_prefix": statistics.fmean(prefix),
                }
        step = decode_step_bytes(self.cfg, self.acct, b, pd + n / 2)
        bw = self.hw["copy_bandwidth_bytes_s"]
        row["floor_step_bytes"] = step
        row["floor_ms_per_step"] = 1e3 * step / bw
        row["floor_tokens_per_s"] = b * bw / step
        row["errors"] = errors
        return row

    # -- the plan
    def run(self, raw: dict[str, Any]) -> int:
        args = self.args
        if not self.setup(raw):
            self.finish()
            return 1
        first_prefill = args.prefill_lens[:1]
        plan: list[tuple[str, int]] = [("prefill", p) for p in first_prefill]
        plan += [("decode", b) for b in args.decode_batches]
        plan += [("prefill", p) for p in args.prefill_lens[1:]]
        for kind, size in plan:
            metric = f"prefill P={size}" if kind == "prefill" else f"decode b={size}"
            skip = self.over_budget(kind, size)
            if skip:
                self.rows.append({"metric": metric, "skipped": skip})
                log(f"{metric}: skipped ({skip})")
                continue
            if kind == "prefill":
                self.run_row(metric, lambda: self.prefill_row(size))
            else:
                self.run_row(metric, lambda: self.decode_row(size))
        return self.finish()

    def over_budget(self, kind: str, size: int) -> str | None:
        """Why a row would not fit the time budget, or None."""
        left = self.args.budget_s - elapsed()
        if left <= 0:
            return f"past the {self.args.budget_s:.0f}s time budget"
        first = next((r for r in self.rows if r.get("kind") == "prefill"), None)
        if kind == "prefill" and first is not None and size != first["prompt_len"]:
            per_call = sum(first[s]["ms"] / 1e3 for s in ("ours", "transformers") if s in first)
            estimate = per_call * (size / first["prompt_len"]) ** 1.3 * (self.args.prefill_repeats + 1) + 5
            if estimate > left:
                return f"estimated {estimate:.0f}s, {left:.0f}s of the time budget left"
        return None

    def finish(self) -> int:
        if self.tok_dir is not None:
            shutil.rmtree(self.tok_dir, ignore_errors=True)
        self.table = format_table(self.rows)
        print("\n" + self.table + "\n", flush=True)
        for r in self.rows:
            if "logits_rel_err" in r:
                print(
                    f"{r['metric']}: logits ours vs transformers rel err {r['logits_rel_err']:.2e}, max |diff| "
                    f"{r['logits_max_abs_diff']:.3g} (rms logit {r['logits_abs_mean_transformers']:.3g}), argmax "
                    f"agreement {r['argmax_agreement']:.1%}, finite {r['logits_finite']}"
                )
            for key in (
                "greedy_ours_vs_transformers",
                "greedy_ours_vs_ours_plain",
                "greedy_ours_plain_vs_transformers",
            ):
                if key in r:
                    g = r[key]
                    print(
                        f"{r['metric']}: {key.removeprefix('greedy_')}: identical {g['identical']}, agreeing "
                        f"prefix min {g['min_agreeing_prefix']} / mean {g['mean_agreeing_prefix']:.1f} of {r['new_tokens']}"
                    )
        for ph in self.phases:
            print(f"phase {ph['phase']}: {ph['seconds']:.1f}s, peak {fmt(ph['peak_gib'], '.1f')} GiB")
        for f in self.failures:
            print(f"FAILED {f.get('phase')} {f.get('side', '')}: {f['error'][:400]}")
        print(
            f"hardware: {device_info(self.device).get('name')}, matmul {self.hw.get('matmul_flops', 0) / 1e12:.3g} "
            f"TFLOP/s, copy bandwidth {self.hw.get('copy_bandwidth_bytes_s', 0) / 1e9:,.0f} GB/s"
        )
        print(f"total time {elapsed():.0f}s")
        self.save()
        print(f"wrote {self.out}", flush=True)
        measured = any(any(s in r for s in ("ours", "ours_plain", "transformers")) for r in self.rows)
        return 0 if measured else 1


# ---- output ---------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summary(row: dict[str, Any]) -> str:
    parts = []
    for side in ("ours", "ours_plain", "transformers"):
        if side in row:
            ms = row[side].get("ms", row[side].get("ms_per_step"))
            parts.append(f"{side} {row[side]['tokens_per_s']:,.1f} tok/s ({ms:.2f} ms)")
    if "floor_tokens_per_s" in row:
        parts.append(f"floor {row['floor_tokens_per_s']:,.0f} tok/s")
    return ", ".join(parts) or "nothing measured"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "metric",
        "ours tok/s",
        "ours plain",
        "transformers",
        "ours/tf",
        "ours ms",
        "plain ms",
        "tf ms",
        "floor tok/s",
        "ours/floor",
        "check",
    )
    lines = [head]
    for r in rows:
        if "skipped" in r or ("kind" not in r):
            reason = r.get("skipped") or next(iter(r.get("errors", {}).values()), "?")
            lines.append((r["metric"], *["-"] * 9, f"skipped/failed: {reason[:60]}"))
            continue

        def get(side: str, key: str) -> float | None:
            return r[side][key] if side in r else None

        ms_key = "ms" if r["kind"] == "prefill" else "ms_per_step"
        ours = get("ours", "tokens_per_s")
        best = ours if ours is not None else get("ours_plain", "tokens_per_s")
        tf = get("transformers", "tokens_per_s")
        if r["kind"] == "prefill":
            check = f"rel err {r['logits_rel_err']:.1e}" if "logits_rel_err" in r else "-"
        else:
            g = r.get("greedy_ours_vs_transformers") or r.get("greedy_ours_plain_vs_transformers")
            check = f"greedy prefix {g['min_agreeing_prefix']}/{r['new_tokens']}" if g else "-"
        if r.get("errors"):
            check += " FAILED: " + ",".join(r["errors"])
        lines.append(
            (
                r["metric"],
                fmt(ours, ",.1f"),
                fmt(get("ours_plain", "tokens_per_s"), ",.1f"),
                fmt(tf, ",.1f"),
                fmt(best / tf if best is not None and tf else None, ".2f"),
                fmt(get("ours", ms_key), ".2f"),
                fmt(get("ours_plain", ms_key), ".2f"),
                fmt(get("transformers", ms_key), ".2f"),
                fmt(r.get("floor_tokens_per_s"), ",.0f"),
                fmt(best / r["floor_tokens_per_s"] if best is not None else None, ".1%"),
                check,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for j, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths))
        ]
        out.append("| " + " | ".join(cells) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "name": props.name,
            "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
        }
    return {"name": platform.processor() or "cpu", "threads": torch.get_num_threads()}


def software_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }
    for mod in ("triton", "mamba_ssm", "causal_conv1d"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: say so
            info[mod] = None
    try:
        from jamba_runtime.kernels.backend import get_kernel_backend

        info["kernel_backend"] = get_kernel_backend()
    except Exception:  # noqa: BLE001
        info["kernel_backend"] = None
    return info


# ---- entry ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--device", default="cuda", help="cuda (default) or cpu (tiny shape, float32: a logic check)"
    )
    ap.add_argument(
        "--config", type=Path, help="a Jamba config.json (default: Jamba-1.5-Mini on cuda, tiny on cpu)"
    )
    ap.add_argument("--layers", type=int, default=8, help="layers kept from the config (default 8)")
    ap.add_argument(
        "--prefill-lens", help="comma-separated P; the first always runs, the rest as time allows"
    )
    ap.add_argument("--decode-batches", help="comma-separated decode batch sizes")
    ap.add_argument("--decode-prompt-len", type=int, help="prompt tokens before decoding (Pd)")
    ap.add_argument("--new-tokens", type=int, help="decoded tokens per sequence (N)")
    ap.add_argument("--repeats", type=int, help="timed decode runs per side after a warm-up")
    ap.add_argument("--prefill-repeats", type=int, help="timed prefill calls per side after a warm-up")
    ap.add_argument("--budget-s", type=float, help="skip remaining rows past this many seconds")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-model decode loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON path (default $OUT/runtime_gpu.json, else bench/results/)")
    ap.add_argument("--quick", action="store_true", help="~1 min: P=1024, decode b=1/16, N=32, fewer repeats")
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    # (prefill lens, decode batches, Pd, N, repeats, prefill repeats, budget)
    profile = {
        (False, False): ("2048,8192", "1,16,64", 256, 64, 3, 5, 330.0),
        (False, True): ("1024", "1,16", 128, 32, 2, 3, 55.0),
        (True, False): ("256", "1,4", 64, 16, 2, 3, 600.0),
        (True, True): ("64", "1,4", 32, 8, 1, 1, 120.0),
    }[(cpu, args.quick)]
    lens, batches, pd, n, reps, preps, budget = profile
    args.prefill_lens = [int(x) for x in (args.prefill_lens or lens).split(",") if x.strip()]
    args.decode_batches = (
        [int(x) for x in (args.decode_batches or batches).split(",") if x.strip()]
        if (args.decode_batches or batches)
        else []
    )
    args.decode_prompt_len = args.decode_prompt_len or pd
    args.new_tokens = args.new_tokens or n
    args.repeats = args.repeats or reps
    args.prefill_repeats = args.prefill_repeats or preps
    args.budget_s = args.budget_s or budget
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2: decode time runs from the first token to the last")
    if not args.prefill_lens or min(args.prefill_lens) < 1 or min(args.decode_batches, default=1) < 1:
        ap.error("--prefill-lens needs at least one positive length; --decode-batches positive sizes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device: run on the GPU machine, or pass --device cpu for a logic check", file=sys.stderr
        )
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # a logic check on a shared box: spinning OpenMP threads only add noise
    if args.config is not None:
        raw = json.loads(args.config.read_text(encoding="utf-8"))
    elif device.type == "cuda":
        raw = MINI_CONFIG
    else:
        raw = {**TINY_CONFIG, **tiny_model_token_ids()}
    try:
        raw = cut_config(raw, args.layers)
    except (ValueError, KeyError) as e:
        print(f"config: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    if os.environ.get("OUT"):
        out = args.out or Path(os.environ["OUT"]) / "runtime_gpu.json"
    else:
        out = args.out or REPO / "bench" / "results" / "runtime_gpu.json"
    log(
        f"device {device} ({device_info(device).get('name')}), {dtype}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; P={args.prefill_lens}, decode b={args.decode_batches} Pd={args.decode_prompt_len} "
        f"N={args.new_tokens}, repeats {args.repeats} (prefill {args.prefill_repeats}), budget {args.budget_s:.0f}s"
    )
    return Bench(args, device, dtype, out).run(raw)


if __name__ == "__main__":
    sys.exit(main())
