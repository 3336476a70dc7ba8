"""Embedders: the packaged all-MiniLM-L6-v2 loads offline; the ONNX export (float32 and int8)
agrees with sentence-transformers; order, batching and the spec strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embeddings import Embedder, OnnxEmbedder, default_model_dir, make_embedder

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


def test_onnx_export_matches_torch(tmp_path: Path, embedder: Embedder) -> None:
    pytest.importorskip("onnx")
    ref = embedder.embed_documents(TEXTS)
    fp32 = OnnxEmbedder(cache_dir=tmp_path, quantize=None)
    np.testing.assert_allclose(fp32.embed_documents(TEXTS), ref, atol=2e-4)
    int8 = OnnxEmbedder(cache_dir=tmp_path, quantize="int8")
    cos = (int8.embed_documents(TEXTS) * ref).sum(1)
    assert cos.min() > 0.97, cos
    assert int8.name == embedder.name and int8.backend == "onnx-int8"  # same vector space
    assert len(list(tmp_path.rglob("*.onnx"))) == 2  # cached, nothing left half-written
    again = make_embedder("minilm", cache_dir=tmp_path)
    np.testing.assert_allclose(again.embed_query(TEXTS[0]), int8.embed_query(TEXTS[0]), atol=1e-6)


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
