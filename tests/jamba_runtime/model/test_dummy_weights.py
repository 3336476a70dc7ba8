"""`load_format="dummy"`: random weights from config.json alone (speed and memory runs of a shape
without its checkpoint). A shard holds exactly the unsharded model's values, so tensor-parallel
runs on dummy weights generate what one process does; experts are made in the stacked layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, EngineConfig, SamplingParams, load_model
from jamba_runtime.config import JambaConfig
from jamba_runtime.errors import InvalidRequestError
from jamba_runtime.model.expert_layout import expert_projections, float_stack_view
from jamba_runtime.model.quantization import Int8Linear, stacked_int8_view
from jamba_runtime.model.sharding import shard_tensor
from jamba_runtime.model.tp_layers import ExpertParallelMoe, TensorParallelGroup
from jamba_runtime.tiny import TINY_CONFIG
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with config.json and a tokenizer, and no weights."""
    d = tmp_path_factory.mktemp("dummy")
    config = JambaConfig.from_dict(dict(TINY_CONFIG), source="test")
    config.save(d)
    write_tiny_tokenizer(d, vocab_size=config.vocab_size)
    assert not list(d.glob("*.safetensors"))
    return d


def test_dummy_weights_need_no_checkpoint_and_give_sane_logits(config_dir: Path) -> None:
    model = load_model(config_dir, load_format="dummy")
    assert not any(p.is_meta for p in model.parameters())
    logits = model(torch.tensor([[1, 5, 9, 33, 2, 7]]))
    assert torch.isfinite(logits).all()
    assert 0.1 < logits.std().item() < 10, "activations O(1): logits neither vanish nor blow up"
    again = load_model(config_dir, load_format="dummy")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    with pytest.raises(InvalidRequestError, match="load_format"):
        load_model(config_dir, load_format="pt")


@pytest.mark.parametrize("quantization", [None, "experts_int8"])
def test_a_shard_holds_the_whole_models_values(config_dir: Path, quantization: str | None) -> None:
    whole = dict(load_model(config_dir, load_format="dummy", quantization=quantization).named_parameters())
    cfg = JambaConfig.from_file(config_dir)
    for rank in range(2):
        shard = load_model(
            config_dir, load_format="dummy", quantization=quantization, tp=TensorParallelGroup(rank, 2)
        )
        params = dict(shard.named_parameters())
        assert params
        for name, p in params.items():
            # RowParallelLinear keeps the checkpoint's name for its weight, as the loader expects.
            want = shard_tensor(name, whole[name], rank, 2, cfg.num_experts)
            assert want is not None and torch.equal(p, want), name
        moe = [m for m in shard.modules() if isinstance(m, ExpertParallelMoe)]
        assert moe and all(m.has_stacks() for m in moe), "this rank's experts are laid out stacked"


def test_int8_experts_are_made_as_int8_in_the_stacked_layout(config_dir: Path) -> None:
    model = load_model(config_dir, load_format="dummy", quantization="experts_int8")
    block = next(m for m in model.modules() if hasattr(m, "stacked_int8"))
    gate, up, down = expert_projections(block.experts)
    assert all(isinstance(m, Int8Linear) and m.weight.dtype == torch.int8 for m in (*gate, *up, *down))
    w13_q, w13_scale, _, _ = stacked_int8_view(gate, up, down)
    # Each row's std is 1/sqrt(fan_in), like the float init.
    row_std = (w13_q[0, 0].float() * w13_scale[0, 0]).std().item()
    assert abs(row_std * model.config.hidden_size**0.5 - 1) < 0.3
    float_model = load_model(config_dir, load_format="dummy")
    fblock = next(m for m in float_model.modules() if hasattr(m, "stacked_int8"))
    assert float_stack_view(*expert_projections(fblock.experts)) is not None, "float experts stacked too"


def test_two_ranks_on_dummy_weights_generate_what_one_process_does(config_dir: Path) -> None:
    engine = EngineConfig(max_num_seqs=2, block_size=4, cache_memory_gb=0.01)
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    prompts = [[1, *range(40, 52)], [1, 7, 300, 12]]
    one = [o.token_ids for o in LLM(config_dir, load_format="dummy", engine=engine).generate(prompts, greedy)]
    with LLM(config_dir, load_format="dummy", engine=engine, tensor_parallel_size=2) as tp:
        two = [o.token_ids for o in tp.generate(prompts, greedy)]
    assert two == one
