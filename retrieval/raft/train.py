"""`raft train`: LoRA fine-tuning (PEFT) of our own `JambaForCausalLM` on the chat export, with the
loss on the assistant turn only; and merging an adapter into a model for serving.

LoRA targets the Mamba projections (`in_proj`, `x_proj`, `out_proj`), attention (`q_proj`,
`k_proj`, `v_proj`, `o_proj`) and the dense MLPs (`gate_proj`, `up_proj`, `down_proj`). Key
difference to PEFT's usual Jamba targets: MoE experts are left out, because our MoE block reads the
expert weights directly (`moe_ref`), so a LoRA wrapper around an expert would never be called.

The adapter is saved in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`), so
`peft.PeftModel` reads it too; `merge_adapter` folds it into the weights (W += alpha/r * B @ A) and
needs no PEFT at serving time: `load_merged_llm(base, adapter)` is an `LLM` with it merged, and
`write_merged_checkpoint` writes a checkpoint directory any `LLM` (and the server) can load.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from jamba_stack.retrieval.raft.errors import OptionalDependencyError, RaftDataError
from jamba_stack.retrieval.raft.jsonl import split_lines

TARGET_MODULES = (
    r".*\.(mamba\.(in_proj|x_proj|out_proj)|self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|feed_forward\.(gate_proj|up_proj|down_proj))"
)
"""PEFT `target_modules` (a regex matched against full module names): experts are not matched."""

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class TrainConfig:
    """LoRA SFT settings. `max_len`: tokens per example (longer prompts lose document tokens from
    their end, never the question at the start nor the answer); `steps`: optimizer steps, one
    example each (0: `epochs` passes over the data)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    lr: float = 2e-4
    steps: int = 0
    epochs: int = 1
    max_len: int = 2048
    seed: int = 0
    log_every: int = 1


@dataclass
class TrainResult:
    """The loss per step, the adapter folder, and counts."""

    losses: list[float] = field(default_factory=list)
    adapter_dir: str = ""
    examples: int = 0
    trainable_params: int = 0
    seconds: float = 0.0


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise OptionalDependencyError("raft train needs peft: pip install 'jamba-stack[train]'") from e
    return peft


def encode_example(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], int]:
    """(token ids, number of prompt tokens) of one chat row: the prompt is the system + user turns
    with the generation prompt; the rest is the assistant turn as the chat template renders it
    (its end-of-turn included, so the model learns to stop)."""
    prompt = tokenizer.encode_chat(messages[:2], add_generation_prompt=True)
    full = tokenizer.encode_chat(messages, add_generation_prompt=False)
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        completion = full[len(prompt) :]
    else:  # a template that renders the assistant turn differently: the answer text and eos
        completion = tokenizer.encode(messages[2]["content"], add_special_tokens=False)
        completion += [tokenizer.eos_token_ids[0]] if tokenizer.eos_token_ids else []
    room = max_len - len(completion)
    if room < 16:
        raise RaftDataError(
            f"an answer of {len(completion)} tokens leaves no room for its prompt in max_len={max_len}: "
            "raise --max-len"
        )
    if len(prompt) > room:  # cut documents from the prompt's end; keep the last 8 (generation prompt)
        prompt = prompt[: room - 8] + prompt[-8:]
    return prompt + completion, len(prompt)


def completion_loss(model: Any, ids: list[int], n_prompt: int) -> torch.Tensor:
    """Mean cross-entropy of the completion tokens of one example (grad-enabled forward)."""
    from jamba_runtime import ForwardBatch, HybridCache

    x = torch.tensor(ids, device=model.device)
    batch = ForwardBatch.build([len(ids)], device=x.device)
    cache = HybridCache(model.config, 1, len(ids), dtype=model.dtype, device=x.device)
    # model.forward runs under inference_mode; the module tree below it is plain autograd.
    logits = model.lm_head(model.model(x, batch, cache))  # (seq, vocab)
    return F.cross_entropy(logits[n_prompt - 1 : -1].float(), x[n_prompt:])


def read_chat_rows(data: Path, split: str = "train") -> list[dict[str, Any]]:
    path = data / f"chat.{split}.jsonl"
    if not path.is_file():
        raise RaftDataError(f"{path} not found: pass the --out folder of `raft generate`")
    return [json.loads(line) for line in split_lines(path.read_text(encoding="utf-8"))]


def train_lora(
    model_dir: Path,
    data: Path,
    out: Path,
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `data/chat.train.jsonl` over the checkpoint in `model_dir`; save it in
    `out` (PEFT layout, plus `train_log.json`). `on_step(step, loss)` is called after every
    optimizer step (1-based), e.g. for a live chart. Raises `OptionalDependencyError` without peft,
    `RaftDataError` for a missing or unusable export."""
    from tqdm.auto import tqdm

    from jamba_runtime import Tokenizer, load_model

    peft = _peft()
    t0 = time.perf_counter()
    rows = read_chat_rows(data)
    if not rows:
        raise RaftDataError(f"{data}/chat.train.jsonl has no rows: generate more data")
    torch.manual_seed(cfg.seed)
    tokenizer = Tokenizer.from_dir(model_dir)
    model = load_model(model_dir, device=device, dtype="float32")
    examples = [encode_example(tokenizer, r["messages"], cfg.max_len) for r in rows]
    lora = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=TARGET_MODULES, bias="none"
    )
    model = peft.inject_adapter_in_model(lora, model)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if p.requires_grad:
            params.append(p)
    model.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = cfg.steps or cfg.epochs * len(examples)
    order: list[int] = []
    rng = random.Random(cfg.seed)
    result = TrainResult(examples=len(examples), trainable_params=sum(p.numel() for p in params))
    for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress):
        if not order:
            order = list(range(len(examples)))
            rng.shuffle(order)
        ids, n_prompt = examples[order.pop()]
        loss = completion_loss(model, ids, n_prompt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.losses.append(round(loss.detach().item(), 6))
        if on_step is not None:
            on_step(len(result.losses), result.losses[-1])
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(model, lora, out)
    result.adapter_dir = str(out)
    result.seconds = round(time.perf_counter() - t0, 2)
    (out / "train_log.json").write_text(json.dumps(result.__dict__ | {"config": cfg.__dict__}, indent=1))
    return result


def save_adapter(model: torch.nn.Module, lora: Any, out: Path) -> None:
    """The adapter weights (PEFT's names: `base_model.model.<module>.lora_A.weight`) and config."""
    from safetensors.torch import save_file

    peft = _peft()
    state = peft.get_peft_model_state_dict(model)
    # PeftModel's prefix, so `peft.PeftModel.from_pretrained` finds the tensors too.
    save_file(
        {f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()},
        str(out / "adapter_model.safetensors"),
    )
    lora.save_pretrained(str(out))


def merge_adapter(model: torch.nn.Module, adapter_dir: Path) -> int:
    """Fold a LoRA adapter into `model`'s weights in place: W += (lora_alpha / r) * B @ A for each
    adapted module. Returns how many modules changed. Raises `RaftDataError` when the adapter is
    unreadable or names a module the model lacks."""
    from safetensors.torch import load_file

    try:
        conf = json.loads((adapter_dir / "adapter_config.json").read_text())
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as e:
        raise RaftDataError(
            f"cannot read the LoRA adapter in {adapter_dir} ({e}): pass a `raft train` output"
        ) from e
    if conf.get("use_rslora"):
        scale = conf["lora_alpha"] / math.sqrt(conf["r"])
    else:
        scale = conf["lora_alpha"] / conf["r"]
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise RaftDataError(f"adapter tensor {key!r} is not a LoRA A/B weight: only LoRA adapters merge")
        pairs.setdefault(m["module"], {})[m["ab"]] = t
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, ab in pairs.items():
            mod = modules.get(name)
            if mod is None or not hasattr(mod, "weight") or set(ab) != {"A", "B"}:
                raise RaftDataError(
                    f"adapter module {name!r} does not match this model: use the adapter's base model"
                )
            w = mod.weight
            w += (scale * (ab["B"].float() @ ab["A"].float())).to(w.dtype).to(w.device)
    return len(pairs)


def load_merged_llm(model_dir: str | Path, adapter_dir: str | Path, **llm_kwargs: Any) -> Any:
    """An `LLM` of the base checkpoint with the adapter merged into its weights (no PEFT needed)."""
    from jamba_runtime.llm import LLM

    llm = LLM(model_dir, **llm_kwargs)
    merge_adapter(llm.model, Path(adapter_dir))
    return llm


def write_merged_checkpoint(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """A checkpoint directory with the adapter merged: tokenizer and config copied, weights in
    one `model.safetensors`. `LLM(out)` and `jamba-stack serve --model out` load it as any other."""
    from safetensors.torch import save_file

    from jamba_runtime import load_model

    model = load_model(model_dir, device="cpu", dtype="float32")
    merge_adapter(model, adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
            shutil.copy2(f, out / f.name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
