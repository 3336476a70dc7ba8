from __future__ import annotations

import json
from pathlib import Path

import pytest

from jamba_runtime.config import JambaConfig
from jamba_runtime.errors import ConfigError

SHARED_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


def test_layer_map_follows_periods_and_offsets() -> None:
    cfg = JambaConfig.from_dict(
        {
            "model_type": "jamba",
            "num_hidden_layers": 16,
            "attn_layer_period": 8,
            "attn_layer_offset": 4,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
        }
    )
    assert cfg.attention_layers == [4, 12]
    assert cfg.moe_layers == [1, 3, 5, 7, 9, 11, 13, 15]
    assert cfg.layer_types[4] == "attention" and cfg.layer_types[5] == "mamba"
    dense = JambaConfig.from_dict({"model_type": "jamba", "num_experts": 1, "num_hidden_layers": 4})
    assert dense.moe_layers == []


def test_dt_rank_auto_and_eos_list() -> None:
    cfg = JambaConfig.from_dict(
        {
            "model_type": "jamba",
            "hidden_size": 200,
            "num_attention_heads": 8,
            "mamba_dt_rank": "auto",
            "eos_token_id": [2, 518],
        }
    )
    assert cfg.mamba_dt_rank == 13
    assert cfg.eos_token_id == (2, 518)


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason="shared model configs not beside the repo")
@pytest.mark.parametrize(
    "name", ["jamba-v0.1", "jamba-1.5-mini", "jamba-1.5-large", "jamba-tiny-dev", "jamba-tiny-random"]
)
def test_published_configs_read(name: str) -> None:
    cfg = JambaConfig.from_file(SHARED_MODELS / name)
    assert cfg.attention_layers and cfg.mamba_layers
    assert JambaConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"model_type": "llama"}, "model_type"),
        ({"hidden_size": -4}, "hidden_size"),
        ({"num_attention_heads": "eight"}, "num_attention_heads"),
        ({"attn_layer_offset": 8}, "attn_layer_offset"),
        ({"expert_layer_offset": 5, "expert_layer_period": 2}, "expert_layer_offset"),
        ({"num_key_value_heads": 3}, "num_attention_heads"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"eos_token_id": "two"}, "eos_token_id"),
        ({"mamba_conv_bias": "yes"}, "mamba_conv_bias"),
    ],
)
def test_bad_field_is_named(patch: dict, field: str) -> None:
    raw = {"model_type": "jamba", **patch}
    with pytest.raises(ConfigError, match=field):
        JambaConfig.from_dict(raw)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        JambaConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        JambaConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        JambaConfig.from_file(tmp_path)
