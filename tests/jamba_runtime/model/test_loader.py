"""Loading checkpoints: layouts that must work and broken ones that must fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jamba_runtime import load_model
from jamba_runtime.errors import CheckpointError, ConfigError, InvalidRequestError, ModelNotFoundError


@pytest.fixture()
def tiny_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_sharded_checkpoint_loads_like_single_file(tiny_copy: Path, tiny_model_dir: Path) -> None:
    tensors = load_file(tiny_copy / "model.safetensors")
    (tiny_copy / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tiny_copy / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (tiny_copy / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    ids = torch.tensor([[1, 50, 60, 70]])
    sharded, single = load_model(tiny_copy), load_model(tiny_model_dir)
    for (name, a), (_, b) in zip(sharded.named_parameters(), single.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # Same weights; BLAS may still sum in another order for differently aligned buffers.
    torch.testing.assert_close(sharded(ids), single(ids), rtol=0, atol=1e-5)


def test_dtypes(tiny_model_dir: Path) -> None:
    for name, dtype in [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]:
        model = load_model(tiny_model_dir, dtype=name)
        assert model.lm_head.weight.dtype == dtype
        assert model(torch.tensor([[1, 2, 3]])).dtype == dtype
    with pytest.raises(InvalidRequestError, match="int8"):
        load_model(tiny_model_dir, dtype="int8")


def test_missing_directory_and_files(tmp_path: Path, tiny_copy: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope" / "deeper")
    (tiny_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tiny_copy)
    (tiny_copy / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config file"):
        load_model(tiny_copy)


def test_hub_id_offline_names_the_id() -> None:
    with pytest.raises(ModelNotFoundError, match="ai21labs/Not-A-Real-Model.*(offline|reached)"):
        load_model("ai21labs/Not-A-Real-Model", local_files_only=True)


def test_wrong_model_type(tiny_copy: Path) -> None:
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type is 'mamba'"):
        load_model(tiny_copy)


def test_shape_mismatch_names_tensor_and_both_shapes(tiny_copy: Path) -> None:
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.\d+\.feed_forward.*' .* \[.*128.*\] .* \[.*96.*\]"
    ):
        load_model(tiny_copy)


def test_missing_and_extra_tensors(tiny_copy: Path) -> None:
    tensors = load_file(tiny_copy / "model.safetensors")
    gone = tensors.pop("model.layers.3.mamba.D")
    save_file(tensors, str(tiny_copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 tensors.*model\.layers\.3\.mamba\.D"):
        load_model(tiny_copy)
    tensors["model.layers.3.mamba.D"] = gone
    tensors["model.layers.3.mamba.extra_thing"] = gone.clone()
    save_file(tensors, str(tiny_copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="does not use: model.layers.3.mamba.extra_thing"):
        load_model(tiny_copy)


@pytest.mark.parametrize("keep", [0.5, 0.999, 4])
def test_truncated_safetensors(tiny_copy: Path, keep: float) -> None:
    path = tiny_copy / "model.safetensors"
    data = path.read_bytes()
    cut = int(len(data) * keep) if keep < 1 else int(keep)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tiny_copy)
