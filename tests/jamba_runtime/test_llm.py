"""Generation through the public `LLM` API, against transformers' `generate` where it applies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from jamba_runtime import LLM, SamplingParams
from jamba_runtime.errors import ContextLengthError, InvalidRequestError

PROMPTS = [
    "The cache",
    "Mamba layers keep a constant-size state, while attention",
    "a",
    "Hello, world! 12345",
]


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> LLM:
    return LLM(model=tiny_model_dir)


def test_greedy_equals_transformers_generate(llm: LLM, hf_tiny) -> None:  # noqa: ANN001
    for prompt in PROMPTS[:2]:
        ids = llm.tokenizer.encode(prompt)
        ref = hf_tiny.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)[
            0, len(ids) :
        ].tolist()
        out = llm.generate([ids], SamplingParams(max_tokens=64, temperature=0))[0]
        assert out.token_ids == ref
    # transformers stops at an end token too; make sure the comparison above covered long runs.
    assert len(out.token_ids) == 64 and out.finish_reason == "length"


def test_batch_of_unequal_prompts_equals_each_alone(llm: LLM) -> None:
    params = [
        SamplingParams(max_tokens=20, temperature=0),
        SamplingParams(max_tokens=7, temperature=0),
        SamplingParams(max_tokens=20, temperature=0.9, seed=3),
        SamplingParams(max_tokens=12, top_k=5, seed=4),
    ]
    together = llm.generate(PROMPTS, params)
    alone = [llm.generate([p], sp)[0] for p, sp in zip(PROMPTS, params, strict=True)]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert [o.text for o in together] == [o.text for o in alone]
    assert len(together[1].token_ids) == 7


def test_seeded_sampling_is_reproducible_and_seed_matters(llm: LLM) -> None:
    p = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, min_p=0.01, repetition_penalty=1.2, seed=11)
    a = llm.generate(PROMPTS[0], p)[0]
    b = llm.generate(PROMPTS[0], p)[0]
    c = llm.generate(PROMPTS[0], SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=12))[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_stream_joins_to_generate_text(llm: LLM) -> None:
    p = SamplingParams(max_tokens=40, temperature=0.8, seed=5)
    deltas = list(llm.stream(PROMPTS[1], p))
    assert len(deltas) > 1
    assert "".join(deltas) == llm.generate(PROMPTS[1], p)[0].text


def test_stop_string_is_cut_and_never_streamed(llm: LLM) -> None:
    base = llm.generate(PROMPTS[1], SamplingParams(max_tokens=40, temperature=0))[0].text
    assert len(base) > 12
    stop = base[8:11]  # a string the greedy output is known to contain
    out = llm.generate(PROMPTS[1], SamplingParams(max_tokens=40, temperature=0, stop=[stop, "zzzz-never"]))[0]
    assert out.finish_reason == "stop"
    assert out.text == base[: base.index(stop)]
    streamed = "".join(llm.stream(PROMPTS[1], SamplingParams(max_tokens=40, temperature=0, stop=stop)))
    assert streamed == out.text


def test_stop_token_ids_and_ignore_eos(llm: LLM) -> None:
    base = llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0))[0]
    target = base.token_ids[5]
    out = llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[target]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == base.token_ids[: base.token_ids.index(target) + 1]
    # Make that token an end-of-sequence id: it stops generation, unless ignore_eos.
    eos_before = llm.eos_token_ids
    llm.eos_token_ids = frozenset({target})
    try:
        stopped = llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0))[0]
        ignored = llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0]
    finally:
        llm.eos_token_ids = eos_before
    assert stopped.token_ids == out.token_ids and stopped.finish_reason == "stop"
    assert ignored.token_ids == base.token_ids and len(ignored.token_ids) == 30


def test_chat_with_tools_and_documents_renders_and_generates(llm: LLM) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    docs = [{"title": "Jamba", "text": "Jamba mixes Mamba and attention layers."}]
    messages = [{"role": "user", "content": "What is Jamba?"}]
    ids = llm.chat_prompt_ids(messages, tools=tools, documents=docs)
    text = llm.tokenizer.decode(ids, skip_special_tokens=False)
    assert "get_weather" in text and "Jamba mixes Mamba" in text and text.rstrip().endswith("<|assistant|>")
    out = llm.chat(messages, SamplingParams(max_tokens=8, temperature=0), tools=tools, documents=docs)
    assert out.token_ids == llm.generate([ids], SamplingParams(max_tokens=8, temperature=0))[0].token_ids


def test_context_limits(tiny_model_dir: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    shutil.copytree(tiny_model_dir, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["max_position_embeddings"] = 32
    (small / "config.json").write_text(json.dumps(cfg))
    llm = LLM(model=small)
    with pytest.raises(ContextLengthError, match=r"prompt 0: prompt has 40 tokens, limit 32"):
        llm.generate([[7] * 40])
    # Prompt fits but prompt + max_tokens does not: stops at the limit, documented as "length".
    out = llm.generate([[7] * 28], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"
    with pytest.raises(InvalidRequestError, match="max_model_len"):
        LLM(model=small, max_model_len=64)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"seed": "x"}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"min_p": float("-inf")}, "min_p"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 10**400}, "seed"),
        ({"temperature": 10**400}, "temperature"),
    ],
)
def test_bad_sampling_values(kwargs: dict, name: str) -> None:
    with pytest.raises(InvalidRequestError, match=name):
        SamplingParams(**kwargs)


def test_bad_prompts(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([[]])
    with pytest.raises(InvalidRequestError, match="outside the vocab"):
        llm.generate([[5, 999999]])
    with pytest.raises(InvalidRequestError, match="2 SamplingParams for 1 prompts"):
        llm.generate(["a"], [SamplingParams(), SamplingParams()])
