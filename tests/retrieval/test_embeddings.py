"""Embedders: the packaged all-MiniLM-L6-v2 loads offline; the fused ONNX build (float32 and
int8) agrees with sentence-transformers; order, batching, parallel calls and the spec strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jamba_stack.retrieval.embeddings import Embedder, OnnxEmbedder, default_model_dir, make_embedder

TEXTS = [
    "Hemoglobin carries oxygen.",
    "Insulin lowers blood glucose after a meal, and its absence causes type 1 diabetes. " * 12,
    "x",
    "Mitochondria produce ATP through oxidative phosphorylation in eukaryotic cells.",
]


def test_default_model_is_the_packaged_one(embedder: Embedder) -> None:
    assert (default_model_dir() / "model.safetensors").is_file()
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2" and embedder.dim == 384
    assert embedder.max_tokens == 256 and embedder.chunk_tokens == 254
    v = embedder.embed_documents(TEXTS)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([embedder.embed_query(t) for t in TEXTS])
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)  # length sorting keeps the order


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    return tmp_path_factory.mktemp("onnx")


def test_onnx_export_matches_torch(onnx_cache: Path, embedder: Embedder) -> None:
    ref = embedder.embed_documents(TEXTS)
    fp32 = OnnxEmbedder(cache_dir=onnx_cache, quantize=None)
    assert fp32.backend == "onnx-fp32-fused"  # all-MiniLM-L6-v2 is BERT: the fusion applies
    np.testing.assert_allclose(fp32.embed_documents(TEXTS), ref, atol=2e-4)
    int8 = OnnxEmbedder(cache_dir=onnx_cache, quantize="int8")
    cos = (int8.embed_documents(TEXTS) * ref).sum(1)
    # a one-token text batched with a 256-token one is the worst case of per-batch activation
    # scales (0.979 here; the unfused int8 build gave 0.981)
    assert cos.min() > 0.97 and cos.mean() > 0.985, cos
    assert int8.name == embedder.name and int8.backend == "onnx-int8-fused"  # same vector space
    # cached: the fused float32 graph and its int8 copy, nothing half-written, no export left over
    names = sorted(p.name for p in onnx_cache.rglob("*") if p.is_file())
    assert names == ["model.fused.int8-s8-pc-rr-ma.onnx", "model.fused.onnx"], names
    again = make_embedder("minilm", cache_dir=onnx_cache)
    np.testing.assert_allclose(again.embed_documents(TEXTS), int8.embed_documents(TEXTS), atol=1e-6)
    # queries run the float32 graph: as exact as sentence-transformers, one by one or many at once
    queries = np.stack([int8.embed_query(t) for t in TEXTS])
    np.testing.assert_allclose(queries, ref, atol=2e-4)
    np.testing.assert_allclose(int8.embed_queries(TEXTS), queries, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_queries(TEXTS), ref, atol=1e-6)  # the base class's


def test_parallel_calls_keep_order_and_values(onnx_cache: Path) -> None:
    """Texts are embedded in calls of `sub_batch` run on `threads` threads: the result must not
    depend on the thread count, and `session.run` (what the MaxSim reranker calls) splits rows
    and puts them back in order."""
    texts = [f"{t} {i}" for i in range(5) for t in TEXTS]  # 20 texts: three sub-batches
    one = OnnxEmbedder(cache_dir=onnx_cache, quantize=None, threads=1)
    two = OnnxEmbedder(cache_dir=onnx_cache, quantize=None, threads=2)
    a, b = one.embed_batch(texts), two.embed_batch(texts)
    np.testing.assert_array_equal(a, b)
    # each text alone gives the same float32 vector (padding never leaks into the pooled vector)
    alone = np.stack([one.embed_query(t) for t in texts])
    np.testing.assert_allclose(a, alone, atol=1e-5)
    enc = two.tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = two.session.run(None, feeds)[0]
    assert hidden.shape == (20, ids.shape[1], 384)
    rows = [one.session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0][0] for i in (0, 13, 19)]
    for r, i in zip(rows, (0, 13, 19), strict=True):
        keep = mask[i].astype(bool)
        np.testing.assert_allclose(hidden[i][keep], r[keep], atol=1e-4)


def test_fusion_check_rejects_a_different_graph(onnx_cache: Path) -> None:
    """`check_same_outputs` is what sends a model whose fused graph misreads the mask back to the
    plain export; two graphs that really differ (float32 vs int8) must fail it."""
    from jamba_stack.retrieval.onnx_build import FusionError, check_same_outputs, fuse_bert

    fp32 = next(onnx_cache.rglob("model.fused.onnx"))
    int8 = next(onnx_cache.rglob("model.fused.int8-*.onnx"))
    tok = OnnxEmbedder(cache_dir=onnx_cache, quantize=None).tokenizer
    check_same_outputs(fp32, fp32, tok)
    with pytest.raises(FusionError, match="differs from the export"):
        check_same_outputs(fp32, int8, tok, atol=1e-6)
    with pytest.raises(FusionError, match="num_heads=0"):
        fuse_bert(fp32, onnx_cache / "never.onnx", num_heads=0, hidden_size=384)


def test_openai_compatible_endpoint() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/embeddings" and self.headers["Authorization"] == "Bearer k"
            data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]} for i, t in enumerate(body["input"])]
            out = json.dumps(
                {"data": data[::-1], "model": body["model"]}
            ).encode()  # any order: sorted by index
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        emb = make_embedder(f"openai:fake@http://127.0.0.1:{server.server_address[1]}/v1", api_key="k")
        assert emb.name == "openai:fake" and emb.dim == 3
        v = emb.embed_documents(["a", "abc"])
        np.testing.assert_allclose(v[1], np.array([3.0, 1.0, 0.0]) / np.sqrt(10), rtol=1e-6)
    finally:
        server.shutdown()


def test_specs() -> None:
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("word2vec")
    with pytest.raises(ValueError, match="cache_dir"):
        make_embedder("minilm")


def test_gpu_embedder_without_a_gpu_says_so() -> None:
    import torch

    from jamba_stack.retrieval.errors import EmbedderUnavailableError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: bench/retrieval/embedder_gpu.py measures that path")
    for spec in ("minilm-cuda", f"st-cuda:{default_model_dir()}"):
        with pytest.raises(EmbedderUnavailableError, match="no CUDA GPU"):
            make_embedder(spec)
