"""Embedder speed on this CPU: texts/s of all-MiniLM-L6-v2 variants on SciFact abstracts, side by
side with float32 PyTorch sentence-transformers (what a plain LangChain pipeline runs: one
`encode` over all texts, batch 32, max_seq_length 256), and how close each variant's vectors are
to it (cosine mean / min).

Variants run interleaved in rounds (A, B, C, A, B, C, ...) so that load from other processes
hits all of them alike; each round embeds all N texts once; the table reports the median round.

    python -m bench.retrieval.embedder_speed                # N=600, 3 rounds, default variants
    python -m bench.retrieval.embedder_speed --n 200 --rounds 2 --variants torch-fp32,fused-int8-pc-rr
    python -m bench.retrieval.embedder_speed --list         # the variant names
    python -m bench.retrieval.embedder_speed --quality fused-int8-pc-rr   # + dense nDCG@10 on the TRAIN split

Models are built once into bench/results/embedder_models/ (git-ignored). Writes
bench/results/embedder_speed.json.

Tried and dropped (2-core AVX2 EPYC, no VNNI; 128 abstracts, same interleaving): OpenVINO 2026.4
on the plain export, float32: 1.3-1.4x torch (below onnxruntime int8); OpenVINO and
onnxruntime on a static QDQ int8 graph (onnxruntime `quantize_static`, 64 TRAIN-split abstracts
for calibration, MinMax or 99.999th percentile): OpenVINO 1.2-1.4x, onnxruntime 1.95x, but
cosine to float32 only 0.945 (static activation ranges do not fit BERT's outliers); torch's own
dynamic int8 (`torch-int8`): 1.34x, cosine 0.92.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.cpu_hardware import cpu_model
from bench.common.paths import RESULTS
from bench.retrieval.beir import SCIFACT, checked, load_beir
from jamba_stack.retrieval.embedder_base import default_model_dir, normalize
from jamba_stack.retrieval.onnx_build import Int8Recipe, export_encoder, fuse_bert, quantize_int8

MAX_TOKENS = 256


def load_texts(data: Path, n: int, seed: int = 0) -> list[str]:
    """`n` abstracts as "title\\n\\ntext", a seeded sample spread over the corpus (0 = all)."""
    rows = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    if 0 < n < len(rows):
        idx = sorted(np.random.default_rng(seed).choice(len(rows), n, replace=False))
        rows = [rows[i] for i in idx]
    return [f"{r.get('title', '')}\n\n{r['text']}".strip() for r in rows]


def token_stats(data: Path) -> dict[str, float]:
    """Tokens per abstract (special tokens excluded, no truncation) over the whole corpus."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    n = np.array([len(e.ids) for e in tok.encode_batch(load_texts(data, 0), add_special_tokens=False)])
    return {
        "abstracts": len(n),
        "mean": float(n.mean()),
        "median": float(np.median(n)),
        "p90": float(np.percentile(n, 90)),
        "max": int(n.max()),
        "frac_over_254": float((n > MAX_TOKENS - 2).mean()),
    }


def sort_by_tokens(texts: list[str]) -> list[str]:
    """Longest first by (truncated) token count, as an ingest sorts its chunks before batching."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    n = [len(e.ids) for e in tok.encode_batch(texts)]
    return [texts[i] for i in np.argsort([-k for k in n], kind="stable")]


# ---------------------------------------------------------------- models


def build(work: Path, what: str, recipe: Int8Recipe | None = None) -> Path:
    """The model file `what` ("fp32" unfused export, "fused" fp32) or its int8 under `recipe`,
    built on first use."""
    import json as _json

    model_dir = default_model_dir()
    fp32 = work / "model.eager.onnx"
    if not fp32.is_file():
        export_encoder(model_dir, fp32)
    src = fp32
    if what == "fused":
        cfg = _json.loads((model_dir / "config.json").read_text())
        src = work / "model.fused.onnx"
        if not src.is_file():
            fuse_bert(fp32, src, num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"])
    if recipe is None:
        return src
    out = work / f"{src.stem}.int8-{recipe.tag}.onnx"
    if not out.is_file():
        quantize_int8(src, out, recipe)
    return out


@dataclass
class OrtRunner:
    """One ONNX file run as `OnnxEmbedder` runs it: truncate to 256 tokens, sort by token length,
    batches padded to their own longest, mean pooling, L2 norm."""

    path: Path
    batch_size: int = 32
    threads: int = 0
    spinning: bool | None = None
    sort: bool = True
    workers: int = 1
    """Batches run at once from this many Python threads on one session (ORT releases the GIL);
    with `threads=1` each batch runs on its own core with no intra-op synchronisation."""
    session: Any = field(init=False)
    tokenizer: Any = field(init=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads:
            so.intra_op_num_threads = self.threads
        if self.spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()

    def __call__(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in enc], kind="stable") if self.sort else np.arange(len(enc))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        batches = [order[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(lambda idx: self._run(enc, idx, out), batches))
        else:
            for idx in batches:
                self._run(enc, idx, out)
        return out

    def _run(self, enc: list[Any], idx: np.ndarray, out: np.ndarray) -> None:
        width = max(len(enc[j].ids) for j in idx)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, j in enumerate(idx):
            ids[r, : len(enc[j].ids)] = enc[j].ids
            mask[r, : len(enc[j].ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, feeds)[0]
        m = mask[..., None].astype(np.float32)
        out[idx] = normalize((hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9))


def torch_fp32() -> Callable[[list[str]], np.ndarray]:
    """What LangChain's HuggingFaceEmbeddings runs: SentenceTransformer.encode, batch 32."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    assert model.max_seq_length == MAX_TOKENS, model.max_seq_length

    def run(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)

    return run


def shipped(quantize: str | None) -> Callable[[list[str]], np.ndarray]:
    """`OnnxEmbedder` as `make_embedder` builds it (its own cache under the work dir)."""
    from jamba_stack.retrieval.embeddings import OnnxEmbedder

    emb = OnnxEmbedder(cache_dir=RESULTS / "embedder_models" / "shipped", quantize=quantize)

    def run(texts: list[str]) -> np.ndarray:
        return emb.embed_documents(texts)

    run.queries = emb.embed_queries  # type: ignore[attr-defined] - train_ndcg embeds queries with it
    return run


def torch_int8() -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers with torch's dynamic int8 `nn.Linear` (fbgemm): the PyTorch-only
    route to int8."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def run(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)

    return run


PREV = Int8Recipe(per_channel=True, reduce_range=False, weight_type="s8", op_types=("MatMul",))
PC_RR = Int8Recipe(per_channel=True, reduce_range=True)
PC = Int8Recipe(per_channel=True, reduce_range=False)


def variants(work: Path, threads: int) -> dict[str, Callable[[], Callable[[list[str]], np.ndarray]]]:
    """name -> factory. "prev-int8" is the recipe `OnnxEmbedder` used before fusion (unfused,
    MatMul only, per channel, full range, one call of 32 texts on all threads). "-2x1": calls run
    `threads` at a time, one thread each (2 x 1 on this 2-core machine), "-bN": N texts per call.
    "shipped-*" is `OnnxEmbedder` itself."""
    t = threads

    def fused(recipe: Int8Recipe | None, **kw: Any) -> Callable[[], OrtRunner]:
        return lambda: OrtRunner(build(work, "fused", recipe), threads=t, **kw)

    return {
        "torch-fp32": torch_fp32,
        "torch-int8": torch_int8,
        "onnx-fp32": lambda: OrtRunner(build(work, "fp32"), threads=t),
        "prev-int8": lambda: OrtRunner(build(work, "fp32", PREV), threads=t),
        "prev-int8-pc-rr": lambda: OrtRunner(
            build(work, "fp32", Int8Recipe(True, True, "s8", ("MatMul",))), threads=t
        ),
        "fused-fp32": fused(None),
        "fused-int8-pc-rr": fused(PC_RR),
        "fused-int8-pc": fused(PC),
        "fused-int8-u8-pc": fused(Int8Recipe(per_channel=True, reduce_range=False, weight_type="u8")),
        "fused-int8-tensor-rr": fused(Int8Recipe(per_channel=False, reduce_range=True)),
        "fused-int8-matmul-only": fused(Int8Recipe(True, True, "s8", ("MatMul",))),
        "fused-int8-nospin": fused(PC_RR, spinning=False),
        "fused-int8-2x1": lambda: OrtRunner(build(work, "fused", PC_RR), threads=1, workers=t, batch_size=16),
        "fused-int8-2x1-b8": lambda: OrtRunner(
            build(work, "fused", PC_RR), threads=1, workers=t, batch_size=8
        ),
        "fused-int8-2x1-b32": lambda: OrtRunner(
            build(work, "fused", PC_RR), threads=1, workers=t, batch_size=32
        ),
        "fused-int8-pc-2x1": lambda: OrtRunner(build(work, "fused", PC), threads=1, workers=t, batch_size=16),
        "prev-int8-2x1": lambda: OrtRunner(build(work, "fp32", PREV), threads=1, workers=t, batch_size=16),
        "fused-fp32-2x1": lambda: OrtRunner(build(work, "fused"), threads=1, workers=t, batch_size=16),
        "fused-int8-b8": fused(PC_RR, batch_size=8),
        "fused-int8-b16": fused(PC_RR, batch_size=16),
        "fused-int8-b64": fused(PC_RR, batch_size=64),
        "fused-fp32-b16": fused(None, batch_size=16),
        "shipped-int8": lambda: shipped("int8"),
        "shipped-fp32": lambda: shipped(None),
    }


DEFAULT_VARIANTS = "torch-fp32,onnx-fp32,prev-int8,fused-fp32,fused-int8-pc-rr,fused-int8-2x1-b8,shipped-int8"


# ---------------------------------------------------------------- quality (TRAIN split only)


def train_ndcg(data: Path, embed: Callable[[list[str]], np.ndarray]) -> dict[str, float]:
    """Dense-only retrieval on SciFact's TRAIN split (809 queries) over the whole corpus, one vector
    per abstract (truncated at 256 tokens): nDCG@10, recall@10, recall@100."""
    queries, qrels = load_beir(data, "train")
    rows = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    ids = [r["_id"] for r in rows]
    docs = embed(load_texts(data, 0))
    qids = list(queries)
    qv = getattr(embed, "queries", embed)([queries[q] for q in qids])  # OnnxEmbedder: float32 queries
    top = np.argsort(-(qv @ docs.T), axis=1)[:, :100]
    return checked({q: [ids[j] for j in top[i]] for i, q in enumerate(qids)}, qrels)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", type=Path, default=SCIFACT)
    ap.add_argument("--n", type=int, default=600, help="abstracts per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slice", type=int, default=64, help="texts per interleaving step")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="ORT and torch threads")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--quality", default="", help="comma list of variants to score on the TRAIN split")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "embedder_speed.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = RESULTS / "embedder_models"
    table = variants(work, args.threads)
    if args.list:
        print("\n".join(table))
        return
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names + [q for q in args.quality.split(",") if q] if v not in table]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; --list shows them")
    if "torch-fp32" not in names:
        names.insert(0, "torch-fp32")

    texts = sort_by_tokens(load_texts(args.data, args.n))
    runners = {}
    for name in names:
        runners[name] = table[name]()
        runners[name](texts[:8])  # warm up: first-run allocations, kernel selection
    # Interleaved finely: every slice of texts goes through every variant (the starting variant
    # rotates), so a burst of load from other processes lands on all variants alike.
    times: dict[str, list[float]] = {n: [] for n in names}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for r in range(args.rounds):
        spent = dict.fromkeys(names, 0.0)
        for k, i in enumerate(range(0, len(texts), args.slice)):
            chunk = texts[i : i + args.slice]
            for name in names[k % len(names) :] + names[: k % len(names)]:
                t = time.perf_counter()
                v = runners[name](chunk)
                spent[name] += time.perf_counter() - t
                if r == 0:
                    parts[name].append(np.asarray(v, dtype=np.float32))
        for name in names:
            times[name].append(spent[name])
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {len(texts) / spent[n]:.1f}" for n in names),
            flush=True,
        )
    vecs = {n: np.concatenate(p) for n, p in parts.items()}

    ref = vecs["torch-fp32"]
    base = len(texts) / statistics.median(times["torch-fp32"])
    res: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "versions": _versions(),
        "n_texts": len(texts),
        "rounds": args.rounds,
        "threads": args.threads,
        "max_tokens": MAX_TOKENS,
        "variants": {},
    }
    for name in names:
        tps = len(texts) / statistics.median(times[name])
        cos = (vecs[name] * ref).sum(1)
        res["variants"][name] = {
            "texts_per_s": tps,
            "vs_torch_fp32": tps / base,
            "round_texts_per_s": [len(texts) / t for t in times[name]],
            "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
        }
    res["token_stats"] = token_stats(args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))  # saved before the slow quality phase
    print(report(res), flush=True)
    for name in (q for q in args.quality.split(",") if q):
        print(f"TRAIN-split quality: {name}", flush=True)
        res["variants"].setdefault(name, {})["train"] = train_ndcg(
            args.data, runners.get(name) or table[name]()
        )
        print(f"  {res['variants'][name]['train']}", flush=True)
        args.out.write_text(json.dumps(res, indent=2))
    if args.quality:
        print(report(res))


def report(res: dict[str, Any]) -> str:
    lines = [
        f"{res['n_texts']} SciFact abstracts (<= {res['max_tokens']} tokens), {res['rounds']} rounds, "
        f"{res['threads']} threads, {res['machine']['cpu']}",
        "| variant | texts/s | vs torch fp32 | cos mean | cos min | train nDCG@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in res["variants"].items():
        nd = f"{v['train']['ndcg@10']:.4f}" if "train" in v else ""
        if "texts_per_s" in v:
            lines.append(
                f"| {name} | {v['texts_per_s']:.1f} | {v['vs_torch_fp32']:.2f}x | {v['cos_mean']:.4f} "
                f"| {v['cos_min']:.4f} | {nd} |"
            )
        else:
            lines.append(f"| {name} | | | | | {nd} |")
    ts = res["token_stats"]
    lines.append(
        f"tokens per abstract (all {ts['abstracts']}): mean {ts['mean']:.0f}, median {ts['median']:.0f}, "
        f"p90 {ts['p90']:.0f}, max {ts['max']}, over 254: {ts['frac_over_254']:.1%}"
    )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("onnxruntime", "onnx", "torch", "sentence-transformers", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
