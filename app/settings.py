"""The one settings object: `JAMBA_STACK_*` env vars, a `.env` file, and CLI flags on top.

Read only at the entry points (the CLI, the server, the web app); the libraries below them take
objects and paths, never a settings lookup.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where data lives and which model runs.

    Attributes:
        data_dir: everything the stack writes (models it makes, collections, indexes).
        model: checkpoint directory or hub id; empty means the embedded tiny model in the data dir.
        device, dtype: where and how the runtime runs the model.
        api_key: when set, the API server requires it as a bearer token.
        host, port: where `jamba-stack serve` listens (loopback by default: set host to 0.0.0.0,
            and an api_key, to serve other machines).
        max_body_bytes: the largest request body the server reads (larger: 413).
        allowed_hosts: Host header values the API answers besides the loopback names and the
            bound address, comma-separated (`*.example.com` for subdomains, `*` for any); others
            get 400.
        max_seqs_per_request: most sequences one request may ask for (prompts x n on
            /v1/completions, n on chat); more is a 400.
        max_queued_requests: most requests waiting for their first token at once; more get 429
            with `Retry-After`.
        default_max_tokens: the answer's length when a request leaves max_tokens out (less if the
            context has less room).
        max_tokens_limit: the largest max_tokens a request may ask for (more is a 400).
        max_documents, max_tools: most documents and tools in one request (more is a 400).
        max_header_bytes: the largest request head (request line + headers) the server reads
            (larger: the connection is answered 400 and closed).
        body_timeout_s: how long the server waits for a request body to finish arriving (then 408).
        served_model_name: the model name(s) the server answers to, comma-separated; empty: the
            model as configured.
        chroma_url: a Chroma server URL; empty means the embedded store in the data dir.
        quantization: empty (weights as `dtype`) or "experts_int8" (MoE experts in int8, see
            docs/scaling.md).
        kv_cache_dtype: "auto" (the model dtype) or "fp8" (float8 KV cache, half of bf16).
        mamba_ssm_dtype: "float32" (default) or "bfloat16" (half the Mamba state memory; the
            GPU fast path needs float32).
        server_url: the API server the web app chats with (`jamba-stack up` sets it); empty: the
            web app loads the model in its own process.
        embedder: the embedder spec for ingest and search (`jamba_stack.retrieval.embeddings.make_embedder`).
        max_upload_mb: the largest file the web app's Documents page accepts.
        request_timeout_s: how long the web app's request to the server may take.

    Example:
        >>> Settings(data_dir="/srv/jamba").tiny_model_dir
    """

    model_config = SettingsConfigDict(env_prefix="JAMBA_STACK_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("data"))
    model: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    api_key: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    allowed_hosts: str = ""
    max_seqs_per_request: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=256, ge=1)
    default_max_tokens: int = Field(default=4096, ge=1)
    max_tokens_limit: int = Field(default=32768, ge=1)
    max_documents: int = Field(default=256, ge=0)
    max_tools: int = Field(default=128, ge=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    body_timeout_s: float = Field(default=60.0, gt=0)
    served_model_name: str = ""
    chroma_url: str = ""
    quantization: str = ""
    kv_cache_dtype: str = "auto"
    mamba_ssm_dtype: str = "float32"
    server_url: str = ""
    embedder: str = "minilm"
    max_upload_mb: float = 20.0
    request_timeout_s: float = 300.0

    @property
    def tiny_model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def raft_sets_dir(self) -> Path:
        """Where the RAFT builder writes generated sets (one folder each: rows, exports)."""
        return self.data_dir / "raft" / "sets"

    @property
    def adapters_dir(self) -> Path:
        """Where the Fine-tune page saves LoRA adapters (one folder each, with `merged/`)."""
        return self.data_dir / "raft" / "adapters"


def load_settings(**overrides: object) -> Settings:
    """Settings from env and `.env`, with non-None `overrides` (CLI flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
