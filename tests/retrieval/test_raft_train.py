"""`raft train` on CPU with the tiny model: LoRA on our own JambaForCausalLM, loss falls on a small
set, the adapter has PEFT's layout (PEFT reads it), merging it gives the LoRA model's logits, and
the runtime with the merged adapter answers differently from the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jamba_stack.app.cli.raft import raft_app
from jamba_stack.retrieval.raft.export import export_all

pytest.importorskip("peft")

DOCS = [
    {"id": "a", "text": "Paris is the capital of France.", "source": "a.md"},
    {"id": "b", "text": "Berlin is in Germany.", "source": "b.md"},
]
QA = [("Capital of France?", "Paris"), ("Where is Berlin?", "Germany"), ("Main city?", "Paris")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):  # noqa: ANN201
    data = tmp_path_factory.mktemp("raftdata")
    rows = [
        {
            "id": f"r{i}", "question": q, "answer": a, "documents": DOCS, "oracle_present": True,
            "oracle_index": 0, "oracle_text": DOCS[0]["text"], "oracle_id": "a",
            "cot_answer": f"##Reason: ##begin_quote##Paris is the capital of France.##end_quote## <ANSWER>: {a}",
        }
        for i, (q, a) in enumerate(QA)
    ]  # fmt: skip
    export_all(data, rows, eval_fraction=0, seed=0, hf=False)
    out = data / "adapter"
    res = CliRunner().invoke(
        raft_app,
        [
            "train", "--data", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--steps", "24",
            "--lr", "3e-3", "--r", "8", "--alpha", "16", "--max-len", "112", "--json", "--merge-to",
            str(data / "merged"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return data, out, json.loads(res.stdout.strip().splitlines()[-1])


def test_loss_falls_and_adapter_is_saved(trained) -> None:  # noqa: ANN001
    _, out, report = trained
    losses = report["losses"]
    assert len(losses) == 24 and all(x == x for x in losses)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["r"] == 8 and conf["lora_alpha"] == 16
    from safetensors.torch import load_file

    names = list(load_file(str(out / "adapter_model.safetensors")))
    for target in ("mamba.in_proj", "mamba.x_proj", "mamba.out_proj", "self_attn.q_proj", "self_attn.o_proj"):
        assert any(f".{target}.lora_A" in n for n in names), target
    assert any(".feed_forward.gate_proj.lora_B" in n for n in names)  # dense MLP
    assert not any(".experts." in n for n in names)  # experts are read by weight, not called


def test_merged_equals_lora_model_and_changes_outputs(trained, tiny_model_dir: Path) -> None:  # noqa: ANN001
    import peft
    from safetensors.torch import load_file

    from jamba_runtime import SamplingParams, load_model
    from jamba_runtime.llm import LLM
    from jamba_stack.retrieval.raft.train import load_merged_llm, merge_adapter

    data, out, _ = trained
    ids = torch.arange(5, 45)[None]
    lora = peft.inject_adapter_in_model(
        peft.LoraConfig.from_pretrained(str(out)), load_model(tiny_model_dir, dtype="float32")
    )
    adapter = load_file(str(out / "adapter_model.safetensors"))
    peft.set_peft_model_state_dict(lora, {k.removeprefix("base_model.model."): v for k, v in adapter.items()})
    base = load_model(tiny_model_dir, dtype="float32")
    with torch.inference_mode():
        before = base(ids)
    assert merge_adapter(base, out) > 0
    with torch.inference_mode():
        assert torch.allclose(base(ids), lora.eval()(ids), atol=1e-4)
        assert not torch.allclose(base(ids), before, atol=1e-3)

    msgs = json.loads((data / "chat.train.jsonl").read_text().splitlines()[0])["messages"][:2]
    sp = SamplingParams(max_tokens=16, temperature=0)
    plain = LLM(tiny_model_dir).chat(msgs, sp).text
    assert load_merged_llm(tiny_model_dir, out).chat(msgs, sp).text != plain
    assert LLM(data / "merged").chat(msgs, sp).text != plain  # the merged checkpoint serves the same way


def test_compare_table_equals_separate_runs(trained, tiny_model_dir: Path, tmp_path: Path, embedder) -> None:  # noqa: ANN001
    """`raft eval --compare`: one table (rows k = 3, 5, 7; EM, F1, citation precision of the base
    and the fine-tuned model, both with RAG) whose numbers are those of the separate --rag-k runs."""
    import shutil

    from jamba_stack.retrieval.raft.corpus import build_corpus
    from jamba_stack.retrieval.raft.evaluate import COMPARE_METRICS, format_compare

    data, adapter, _ = trained
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, city in enumerate(["Paris", "Berlin", "Rome", "Madrid", "Vienna", "Lisbon", "Oslo", "Prague"]):
        (docs / f"c{i}.md").write_text(f"{city} is a capital city in Europe with {i + 2} million people.")
    _, retriever = build_corpus(docs, data_dir=tmp_path / "d", embedder=embedder)
    ev = tmp_path / "ev"
    shutil.copytree(data, ev, ignore=shutil.ignore_patterns("adapter", "merged"))
    (ev / "summary.json").write_text(
        json.dumps({"collection": retriever.collection.name, "embedder": "minilm-fp32"})
    )
    common = [
        "eval", "--data", str(ev), "--model", str(tiny_model_dir), "--split", "train", "--max-tokens", "8",
        "--json", "--data-dir", str(tmp_path / "d"),
    ]  # fmt: skip

    def run(*extra: str) -> dict:
        res = CliRunner().invoke(raft_app, [*common, *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout.strip().splitlines()[-1])

    cmp = run("--compare", "--adapter", str(adapter))
    assert cmp["ks"] == [3, 5, 7] and cmp["rows"] == 3
    assert [r["k"] for r in cmp["table"]] == [3, 5, 7]
    for r in cmp["table"]:
        assert set(r) == {"k", "base", "finetuned"}
        assert set(r["base"]) == set(r["finetuned"]) == set(COMPARE_METRICS)
    base = run("--rag-k", "3,5,7")["rag"]
    tuned = run("--rag-k", "3,5,7", "--adapter", str(adapter))["rag"]
    assert cmp["base"] == base and cmp["finetuned"] == tuned
    for r in cmp["table"]:
        for m in COMPARE_METRICS:
            assert r["base"][m] == base[f"top{r['k']}"][m]
            assert r["finetuned"][m] == tuned[f"top{r['k']}"][m]
    text = format_compare(cmp["table"]).splitlines()
    assert len(text) == 2 + 3 and "base EM" in text[0] and "ft cite" in text[0]
    assert text[2].split()[0] == "3" and text[4].split()[0] == "7"
    no_adapter = CliRunner().invoke(raft_app, [*common, "--compare"])
    assert no_adapter.exit_code == 2 and "--compare needs --adapter" in no_adapter.output
