"""In bf16, which runtime is closer to a float32 run of the same weights: ours or transformers'?

    python -m bench.runtime.gpu_quality                     # Mini shape cut to 8 layers, one GPU
    python -m bench.runtime.gpu_quality --device cpu --quick  # tiny shape: a logic check

Both models get the same random weights (made in bf16, as a checkpoint holds them; Mamba's A_log
and D in float32 as our loader keeps them). Four runs of the same prompts' prefill logits:
ours bf16, transformers bf16, ours float32, transformers float32 (the float32 runs upcast the very
same bf16 values, so only arithmetic precision differs). Each bf16 run is compared with both
float32 runs (relative Frobenius error, argmax agreement, mean KL divergence of the softmax), and
the two float32 runs with each other (they should agree to float32 rounding). On the GPU one side
waits on the CPU while the other is upcast, so the 8-layer cut (26.6 GiB bf16, 53 GiB float32)
fits one 80 GB card. JSON to `$OUT/runtime_gpu_quality.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import torch

from bench.common.gpu_models import MINI_CONFIG, build_models, cut_config, layer_map, prompts
from bench.common.gpu_timing import free_memory
from bench.common.paths import out_dir
from jamba_runtime.tiny import TINY_CONFIG


def to_dtype(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Every floating parameter to `device` and `dtype`, one at a time (the old copy is freed as
    it goes, so the peak is one model's new size plus one tensor)."""
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        module_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(module_name)
        if getattr(mod, attr) is not p:  # a tied weight already moved through its other name
            continue
        want = dtype if p.is_floating_point() and p.dtype != torch.float32 else p.dtype
        setattr(mod, attr, torch.nn.Parameter(p.data.to(device=device, dtype=want), requires_grad=False))
    if getattr(model.config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight


def logits_of(side: str, model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Prefill logits of every position of each prompt (one prompt per call), float32 on the CPU."""
    outs = []
    with torch.inference_mode():
        for row in ids.split(1):
            out = model(row) if side == "ours" else model(input_ids=row).logits
            outs.append(out.float().cpu())
    return torch.cat(outs)


def compare(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """`x` against the reference `ref` (both (..., vocab) float32)."""
    a, b = x.reshape(-1, x.shape[-1]).double(), ref.reshape(-1, ref.shape[-1]).double()
    kl = torch.nn.functional.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="none")
    return {
        "rel_err": float((a - b).norm() / b.norm()),
        "max_abs_diff": float((a - b).abs().max()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
        "kl_mean": float(kl.sum(-1).mean()),
        "finite": bool(torch.isfinite(a).all()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny shape: a logic check)")
    ap.add_argument("--layers", type=int, default=8, help="layers kept from the Mini config (default 8)")
    ap.add_argument("--prompts", type=int, default=2, help="prompts (default 2)")
    ap.add_argument("--prompt-len", type=int, default=2048, help="tokens per prompt (default 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny shape, 2 x 64 tokens")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" or args.quick:
        raw, args.prompt_len = dict(TINY_CONFIG), min(args.prompt_len, 64)
    else:
        raw = cut_config(MINI_CONFIG, args.layers)
    torch.manual_seed(args.seed)
    ours, hf, info = build_models(raw, device, torch.bfloat16, args.seed)
    if hf is None:
        print(f"transformers' model could not be built: {info.get('transformers_error')}", file=sys.stderr)
        return 1
    ids = prompts(raw["vocab_size"], args.prompts, args.prompt_len, seed=7, device=device)
    logits: dict[str, torch.Tensor] = {}
    logits["ours bf16"] = logits_of("ours", ours, ids)
    logits["transformers bf16"] = logits_of("transformers", hf, ids)
    # Upcast one side while the other waits on the CPU (the weights are shared until then).
    parked = torch.device("cpu")
    to_dtype(hf, torch.bfloat16, parked)
    free_memory()
    to_dtype(ours, torch.float32, device)
    free_memory()
    logits["ours float32"] = logits_of("ours", ours, ids)
    del ours
    free_memory()
    to_dtype(hf, torch.float32, device)
    free_memory()
    logits["transformers float32"] = logits_of("transformers", hf, ids)
    del hf
    free_memory()

    rows: list[dict[str, Any]] = []
    for run in ("ours bf16", "transformers bf16", "ours float32"):
        for ref in ("transformers float32", "ours float32"):
            if run != ref:
                rows.append({"run": run, "reference": ref, **compare(logits[run], logits[ref])})
    print(
        f"# bf16 vs float32 of the same weights: {layer_map_of(raw)}, {args.prompts} x {args.prompt_len} tokens"
    )
    print("| run | reference | rel err | max abs diff | argmax agreement | KL mean |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['reference']} | {r['rel_err']:.3e} | {r['max_abs_diff']:.3e} | "
            f"{r['argmax_agreement']:.4f} | {r['kl_mean']:.3e} |"
        )
    result = {
        "config": {k: raw[k] for k in ("num_hidden_layers", "hidden_size", "num_experts", "vocab_size")},
        "layers": layer_map_of(raw),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "transformers": info,
        "rows": rows,
    }
    path = out_dir() / "runtime_gpu_quality.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"JSON: {path.name}")
    bad = [r for r in rows if not r["finite"] or math.isnan(r["rel_err"])]
    return 1 if bad else 0


def layer_map_of(raw: dict[str, Any]) -> str:
    from jamba_runtime.config import JambaConfig

    return layer_map(JambaConfig.from_dict(raw, source="bench config"))


if __name__ == "__main__":
    sys.exit(main())
