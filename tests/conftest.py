"""Shared fixtures: the tiny model (made once per test session) and transformers' reference."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from jamba_runtime.tiny import make_tiny_model

# The tiny model's matmuls are too small to split: a second thread only adds waiting.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="session")
def hf_tiny(tiny_model_dir: Path):  # noqa: ANN201 - transformers model
    """transformers' JambaForCausalLM on the tiny checkpoint, float32 (the numerical reference)."""
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers.JambaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
