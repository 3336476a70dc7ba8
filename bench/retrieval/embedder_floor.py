"""The hardware floor under ingest: how fast could all-MiniLM-L6-v2 embed SciFact on this CPU if
nothing but its matmuls cost time?

Measured here, on all cores: the rate of float32 matmuls (PyTorch, what LangChain's
sentence-transformers runs) and int8 matmuls (onnxruntime `MatMulInteger`, uint8 x int8, what our
int8 graph runs) at MiniLM's own linear shapes. Counted from the corpus: the tokens each pipeline
embeds (ours: every chunk of the default chunker, title header and overlap included; LangChain:
one window per abstract); both cut a text at the model's 256 tokens. The floor of a pipeline is
its FLOPs (linears + attention, no padding) at the measured rates; the ceiling of our ingest
speed-up is LangChain's measured time over our floor, i.e. what we would reach if everything but
the matmuls were free.

    python -m bench.retrieval.embedder_floor                    # LangChain's time from bench/results/retrieval.json
    python -m bench.retrieval.embedder_floor --langchain-s 263  # or given (s spent embedding)

Writes bench/results/embedder_floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.paths import RESULTS
from bench.retrieval.beir import SCIFACT

HIDDEN, FFN, LAYERS = 384, 1536, 6
# (in, out) of each linear in one MiniLM layer: fused QKV, attention output, FFN up, FFN down.
LINEARS = [(HIDDEN, 3 * HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, FFN), (FFN, HIDDEN)]
ROWS = 1536  # one 8-text call of ~190-token chunks
MAX_SEQ = 256  # all-MiniLM-L6-v2's max_seq_length: longer texts are cut there, by both pipelines


def _rate(fn: Callable[[], Any], flops: float, seconds: float = 1.0) -> float:
    """FLOP/s of `fn`, best of repeated timed runs over about `seconds`."""
    fn()
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best


def _ort_matmul(op: str, a_type: int, b_type: int, y_type: int, m: int, k: int, n: int, threads: int):  # noqa: ANN202
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        "matmul",
        [
            helper.make_tensor_value_info("A", a_type, [m, k]),
            helper.make_tensor_value_info("B", b_type, [k, n]),
        ],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def gemm_rates(threads: int, rows: int = ROWS) -> dict[str, dict[str, float]]:
    """GFLOP/s per linear shape: torch float32 and onnxruntime int8 (`MatMulInteger`)."""
    import torch
    from onnx import TensorProto

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for k, n in LINEARS:
        flops = 2.0 * rows * k * n
        a, b = torch.randn(rows, k), torch.randn(k, n)
        sess = _ort_matmul(
            "MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, rows, k, n, threads
        )
        feeds = {
            "A": rng.integers(0, 255, (rows, k), dtype=np.uint8),
            "B": rng.integers(-127, 127, (k, n), dtype=np.int8),
        }
        out[f"{k}x{n}"] = {
            "torch_fp32": _rate(lambda a=a, b=b: a @ b, flops) / 1e9,
            "ort_int8": _rate(lambda s=sess, f=feeds: s.run(None, f), flops) / 1e9,
        }
    return out


def seq_flops(length: np.ndarray) -> np.ndarray:
    """FLOPs of each sequence of `length` tokens through MiniLM: linears + attention scores and
    values (both 2 * L * L * hidden per layer); embeddings, norms and softmax left out."""
    lin = 2.0 * sum(k * n for k, n in LINEARS) * LAYERS
    return length * lin + 4.0 * length * length * HIDDEN * LAYERS


def floor_seconds(lengths: np.ndarray, rates: dict[str, dict[str, float]], which: str) -> float:
    """Time of the matmuls alone for `lengths` at the measured rates: each linear at its own shape's
    `which` rate, attention at float32's mean rate (both pipelines compute attention in float32:
    onnxruntime's int8 `QAttention` quantizes only the QKV projection)."""
    tokens = float(lengths.sum())
    lin = sum(2.0 * k * n * LAYERS * tokens / (rates[f"{k}x{n}"][which] * 1e9) for k, n in LINEARS)
    attn_flops = float((seq_flops(lengths) - lengths * 2.0 * sum(k * n for k, n in LINEARS) * LAYERS).sum())
    mean = float(np.mean([r["torch_fp32"] for r in rates.values()])) * 1e9
    return lin + attn_flops / mean


def token_lengths(corpus: Path, chunk_tokens: int) -> dict[str, np.ndarray]:
    """Tokens per embedded sequence (special tokens included, cut at `MAX_SEQ`): our chunks of a
    BEIR `corpus.jsonl`, and LangChain's one window per abstract (`title + " " + text`)."""
    from jamba_stack.retrieval.chunking import Chunker, HFTokenCounter
    from jamba_stack.retrieval.embeddings import default_model_dir
    from jamba_stack.retrieval.loaders import load_file

    counter = HFTokenCounter(str(default_model_dir() / "tokenizer.json"))
    docs, _ = load_file(corpus)
    chunks = [c for cs in Chunker(counter, chunk_tokens).chunk_many(docs) for c in cs]
    ours = np.array([len(s) + 2 for s in counter.token_starts_many([c.text for c in chunks])])
    ours = np.minimum(ours, MAX_SEQ)
    rows = [json.loads(x) for x in corpus.read_text().splitlines()]
    full = np.array(
        [len(s) + 2 for s in counter.token_starts_many([r["title"] + " " + r["text"] for r in rows])]
    )
    return {"ours": ours, "langchain": np.minimum(full, MAX_SEQ)}


def floors(
    corpus: Path,
    chunk_sizes: list[int],
    langchain_s: float | None,
    measured: dict[str, float] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """The matmul rates and, per pipeline, its tokens, its matmul floor and (for ours) the best
    documents/s ratio over LangChain's measured `langchain_s` that the floor leaves possible.
    `measured`: ingest seconds by bench key (`ours_int8`, `ours_int8_chunk510`, `langchain`)."""
    threads = threads or os.cpu_count() or 2
    measured = measured or {}
    load0 = os.getloadavg()[0]
    rates = gemm_rates(threads)
    rows = []
    lc_lengths = np.zeros(0)
    for ct in chunk_sizes:
        lens = token_lengths(corpus, ct)
        lc_lengths = lens["langchain"]
        floor = floor_seconds(lens["ours"], rates, "ort_int8")
        rows.append(
            {
                "pipeline": f"ours, {ct}-token chunks, int8",
                "key": "ours_int8" if ct == 254 else f"ours_int8_chunk{ct}",
                "sequences": int(len(lens["ours"])),
                "tokens": int(lens["ours"].sum()),
                "floor_s": floor,
                "ceiling_ratio_vs_langchain": langchain_s / floor if langchain_s else None,
            }
        )
    rows.append(
        {
            "pipeline": "LangChain, one window per abstract, fp32",
            "key": "langchain",
            "sequences": int(len(lc_lengths)),
            "tokens": int(lc_lengths.sum()),
            "floor_s": floor_seconds(lc_lengths, rates, "torch_fp32"),
            "ceiling_ratio_vs_langchain": None,
        }
    )
    for row in rows:
        row["measured_ingest_s"] = measured.get(row["key"])
    return {"threads": threads, "load_avg_at_start": load0, "gemm_gflops": rates, "rows": rows}


def report(res: dict[str, Any]) -> str:
    lines = [
        f"matmul GFLOP/s at {ROWS} rows, {res['threads']} threads (load {res['load_avg_at_start']:.2f} at start):"
    ]
    for shape, r in res["gemm_gflops"].items():
        lines.append(
            f"  {shape:>9}  torch fp32 {r['torch_fp32']:6.1f}   ort int8 {r['ort_int8']:6.1f}   "
            f"int8/fp32 {r['ort_int8'] / r['torch_fp32']:.2f}"
        )
    lines += [
        "",
        "| pipeline | sequences | tokens | matmul floor s | measured ingest s | best docs/s ratio vs LangChain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in res["rows"]:
        m, c = row["measured_ingest_s"], row["ceiling_ratio_vs_langchain"]
        lines.append(
            f"| {row['pipeline']} | {row['sequences']:,} | {row['tokens']:,} | {row['floor_s']:.1f} | "
            f"{'' if m is None else f'{m:.1f}'} | {'' if c is None else f'{c:.2f}x'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", type=Path, default=SCIFACT)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--chunk-tokens", default="254,510", help="our chunk sizes to count")
    ap.add_argument("--retrieval-json", type=Path, default=RESULTS / "retrieval.json")
    ap.add_argument("--langchain-s", type=float, default=0.0, help="LangChain's measured ingest s")
    ap.add_argument("--out", type=Path, default=RESULTS / "embedder_floor.json")
    args = ap.parse_args()

    measured: dict[str, float] = {}
    if args.retrieval_json.is_file():
        r = json.loads(args.retrieval_json.read_text())
        measured = {k: v["ingest_s"] for k, v in r.items() if isinstance(v, dict) and "ingest_s" in v}
    lc_s = args.langchain_s or measured.get("langchain")
    sizes = [int(x) for x in args.chunk_tokens.split(",") if x]
    res = floors(args.data / "corpus.jsonl", sizes, lc_s, measured, args.threads)
    res["load_avg_at_end"] = os.getloadavg()[0]
    print(report(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
