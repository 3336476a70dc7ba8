"""The model shapes the scale benches run: built-in names and any folder of the project's shared
model configs (`shared/models/<name>/config.json`, beside the repository or inside it).

Built in (no file needed, so a device run, which does not carry `../shared`, has them):
- `mini`, `large`: Jamba-1.5-Mini and Jamba-1.5-Large as in `shared/models/jamba-1.5-*`;
- `tiny`: the test model (`jamba_runtime.tiny`), a CPU logic check;
- `tiny-large`: Large's layer pattern (attention every 8th layer from 4, MoE every 2nd from 1, 16
  experts, top-2, 8 query heads per KV head) at tiny widths, 16 layers (two of Large's 8-layer
  blocks): the tensor + expert parallel split of Large, checkable on CPU.

Any other name is looked up as a folder of `shared/models` (exact, or `jamba-1.5-<name>`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common.gpu_models import MINI_CONFIG
from bench.common.paths import REPO
from jamba_runtime.errors import ConfigError
from jamba_runtime.tiny import TINY_CONFIG
from jamba_runtime.tokenizer.tiny import tiny_model_token_ids

# Inside the checkout first (a device run carries `shared/` only from there), then beside it.
MODELS_DIRS = (REPO / "shared" / "models", REPO.parent / "shared" / "models")

# shared/models/jamba-1.5-large/config.json (tests/bench/test_scale_bench.py checks the two agree
# wherever the shared folder is present): 72 layers, 9 attention, 36 MoE layers of 16 experts.
LARGE_CONFIG: dict[str, Any] = {
    **MINI_CONFIG,
    "hidden_size": 8192,
    "intermediate_size": 24576,
    "mamba_dt_rank": 512,
    "num_attention_heads": 64,
    "num_hidden_layers": 72,
}

# The keys that make Large's layer pattern and its tensor / expert split (what `tiny-large` keeps).
LARGE_PATTERN_KEYS = (
    "attn_layer_period",
    "attn_layer_offset",
    "expert_layer_period",
    "expert_layer_offset",
    "num_experts",
    "num_experts_per_tok",
)

TINY_LARGE_CONFIG: dict[str, Any] = {
    **TINY_CONFIG,
    **{k: LARGE_CONFIG[k] for k in LARGE_PATTERN_KEYS},
    "num_hidden_layers": 16,
    "hidden_size": 64,
    "intermediate_size": 192,  # 3 x hidden, as Large's 24576 = 3 x 8192
    "num_attention_heads": 16,  # 8 query heads per KV head, as Large's 64 / 8
    "num_key_value_heads": 2,
    "mamba_dt_rank": 4,  # ceil(hidden / 16), Large's rule
}

BUILTIN: dict[str, dict[str, Any]] = {
    "mini": MINI_CONFIG,
    "large": LARGE_CONFIG,
    "tiny": {**TINY_CONFIG, **tiny_model_token_ids()},
    "tiny-large": {**TINY_LARGE_CONFIG, **tiny_model_token_ids()},
}


def shared_shapes() -> dict[str, Path]:
    """Folder name -> folder of every `config.json` under the shared model dirs found."""
    out: dict[str, Path] = {}
    for root in reversed(MODELS_DIRS):  # the checkout's copy wins over the one beside it
        if root.is_dir():
            out.update({p.parent.name: p.parent for p in sorted(root.glob("*/config.json"))})
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """The raw dict of a `config.json`, given the file or its folder."""
    p = Path(path)
    file = p / "config.json" if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"--config {path}: no config.json there; pass a model folder or its config.json")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {file}: not valid JSON ({e}); fix the file") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {file}: holds a {type(raw).__name__}, not a JSON object")
    return raw


def resolve_shape(name: str) -> dict[str, Any]:
    """The raw config of a built-in shape name or of a shared model folder (`jamba-1.5-large`,
    `jamba-tiny-dev`; `1.5-mini` and such also find `jamba-1.5-mini`)."""
    if name in BUILTIN:
        return dict(BUILTIN[name])
    found = shared_shapes()
    for key in (name, f"jamba-{name}", f"jamba-1.5-{name}"):
        if key in found:
            return read_config(found[key])
    dirs = ", ".join(str(d) for d in MODELS_DIRS)
    names = sorted({*BUILTIN, *found})
    raise ConfigError(
        f"--shape {name!r} is unknown: use one of {names} (folders looked in: {dirs}), "
        "or --config PATH for any config.json"
    )
