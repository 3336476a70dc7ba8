"""Typed Jamba config read from a Hugging Face `config.json`, plus the layer map.

Field names are those of the Hugging Face config (`attn_layer_period`, `mamba_d_state`, ...) so a
checkpoint's file reads without translation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from jamba_runtime.errors import ConfigError


@dataclass(frozen=True)
class JambaConfig:
    """The shape of a Jamba model. Build with `JambaConfig.from_dict` or `from_file` to validate.

    Example:
        >>> cfg = JambaConfig.from_file("path/to/model/config.json")
        >>> cfg.attention_layers, cfg.moe_layers
    """

    vocab_size: int = 65536
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 262144
    num_experts: int = 16
    num_experts_per_tok: int = 2
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: tuple[int, ...] = (2,)
    pad_token_id: int | None = 0
    torch_dtype: str | None = None
    initializer_range: float = 0.02
    # Keys of the source file we do not use (kept so `to_dict` round-trips).
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ---- derived shape -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_expand * self.hidden_size

    def is_attention_layer(self, i: int) -> bool:
        return i % self.attn_layer_period == self.attn_layer_offset

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 1 and i % self.expert_layer_period == self.expert_layer_offset

    @property
    def layer_types(self) -> list[str]:
        """`"attention"` or `"mamba"` per layer, in order."""
        return ["attention" if self.is_attention_layer(i) else "mamba" for i in range(self.num_hidden_layers)]

    @property
    def attention_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_attention_layer(i)]

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if not self.is_attention_layer(i)]

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]

    # ---- reading and writing -------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> JambaConfig:
        """Read and validate a `config.json` (or the directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config file at {path}: a Jamba checkpoint directory needs a config.json")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); re-download or re-save the checkpoint") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object, found {type(raw).__name__}")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> JambaConfig:
        """Validate a config dict; raises `ConfigError` naming the bad field."""
        model_type = raw.get("model_type")
        if model_type != "jamba":
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, expected 'jamba'; this runtime only runs Jamba checkpoints"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        # The first Jamba-v0.1 upload named the context `n_ctx`.
        if "max_position_embeddings" not in raw and "n_ctx" in raw:
            raw = {**raw, "max_position_embeddings": raw["n_ctx"]}
        for f in fields(cls):
            if f.name == "extra" or f.name not in raw:
                continue
            values[f.name] = raw[f.name]
        extra = {k: v for k, v in raw.items() if k not in known}
        if "torch_dtype" not in raw and isinstance(raw.get("dtype"), str):
            values["torch_dtype"] = raw["dtype"]

        hidden = values.get("hidden_size", cls.hidden_size)
        if values.get("mamba_dt_rank", None) == "auto":
            if not isinstance(hidden, int):
                raise ConfigError(f"{source}: field 'hidden_size' must be an integer, got {hidden!r}")
            values["mamba_dt_rank"] = math.ceil(hidden / 16)
        if values.get("num_key_value_heads") is None and "num_key_value_heads" in values:
            values["num_key_value_heads"] = values.get("num_attention_heads", cls.num_attention_heads)
        eos = values.get("eos_token_id", (2,))
        if isinstance(eos, int):
            eos = (eos,)
        elif eos is None:
            eos = ()
        elif isinstance(eos, list | tuple) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in eos
        ):
            eos = tuple(eos)
        else:
            raise ConfigError(
                f"{source}: field 'eos_token_id' must be an integer or a list of integers, got {eos!r}"
            )
        values["eos_token_id"] = eos

        cfg = cls(**values, extra=extra)
        cfg._validate(source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face form, as written to `config.json`."""
        out = dict(self.extra)
        for k, v in asdict(self).items():
            if k == "extra":
                continue
            out[k] = v
        eos = list(self.eos_token_id)
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
        out["model_type"] = "jamba"
        out.setdefault("architectures", ["JambaForCausalLM"])
        if out.get("torch_dtype") is None:
            out.pop("torch_dtype")
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    # ---- validation ----------------------------------------------------------------------------
    def _validate(self, source: str) -> None:
        positive_ints = [
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "num_experts", "num_experts_per_tok",
            "expert_layer_period", "attn_layer_period", "mamba_d_state", "mamba_d_conv", "mamba_expand",
            "mamba_dt_rank",
        ]  # fmt: skip
        for name in positive_ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{source}: field '{name}' must be a positive integer, got {v!r}")
        for name in ["expert_layer_offset", "attn_layer_offset"]:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{source}: field '{name}' must be a non-negative integer, got {v!r}")
        for name in ["mamba_conv_bias", "mamba_proj_bias", "tie_word_embeddings"]:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{source}: field '{name}' must be true or false, got {getattr(self, name)!r}"
                )
        if not isinstance(self.rms_norm_eps, int | float) or not self.rms_norm_eps > 0:
            raise ConfigError(
                f"{source}: field 'rms_norm_eps' must be a positive number, got {self.rms_norm_eps!r}"
            )
        if self.hidden_act != "silu":
            raise ConfigError(
                f"{source}: field 'hidden_act' is {self.hidden_act!r}; only 'silu' is supported"
            )
        if self.attn_layer_offset >= self.attn_layer_period:
            raise ConfigError(
                f"{source}: field 'attn_layer_offset' ({self.attn_layer_offset}) must be smaller than "
                f"'attn_layer_period' ({self.attn_layer_period})"
            )
        if self.expert_layer_offset >= self.expert_layer_period:
            raise ConfigError(
                f"{source}: field 'expert_layer_offset' ({self.expert_layer_offset}) must be smaller than "
                f"'expert_layer_period' ({self.expert_layer_period})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{source}: field 'hidden_size' ({self.hidden_size}) must be divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{source}: field 'num_attention_heads' ({self.num_attention_heads}) must be divisible by "
                f"'num_key_value_heads' ({self.num_key_value_heads})"
            )
        if self.num_experts > 1 and self.num_experts_per_tok > self.num_experts:
            raise ConfigError(
                f"{source}: field 'num_experts_per_tok' ({self.num_experts_per_tok}) exceeds "
                f"'num_experts' ({self.num_experts})"
            )
        # Token ids are not range-checked: transformers does not check them either, and random test
        # configs often carry the default ids with a smaller vocab.
