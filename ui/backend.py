"""What the web app talks to, resolved from settings: an API server (`JAMBA_STACK_SERVER_URL`) or
an in-process model (`JAMBA_STACK_MODEL`, else the tiny random model in the data dir), the data
dir, and Chroma (embedded in the data dir, or `JAMBA_STACK_CHROMA_URL`).

No Streamlit here: pages cache what these functions build (`jamba_stack.ui.session`), tests call them
directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from jamba_stack.app.client import ChatModel, LocalChatModel, RemoteChatModel
from jamba_stack.app.settings import Settings
from jamba_stack.ui.errors import ServerUnavailableError

Mode = Literal["server", "in-process"]

TINY_SERVED_NAME = "jamba-tiny"
"""The name `jamba-stack serve` answers to when it serves the tiny model (no --model given)."""

RANDOM_WEIGHTS_NOTICE = (
    "Answers come from a **random-weight test model** (the tiny Jamba made for tests): its text is "
    "gibberish. Set JAMBA_STACK_MODEL to a real checkpoint (or start `jamba-stack up --model DIR`) "
    "for real answers."
)


class UISettings(Settings):
    """`jamba_stack.app.settings.Settings` plus what only the web app uses (same `JAMBA_STACK_*` env vars and
    `.env` file).

    Attributes:
        server_url: the API server to chat with (`jamba-stack serve`); empty: load the model
            in this process.
        embedder: the embedder spec for ingest and search (`jamba_stack.retrieval.embeddings.make_embedder`).
        max_upload_mb: the largest file the Documents page accepts.
        request_timeout_s: how long a request to the server may take.
    """

    server_url: str = ""
    embedder: str = "minilm"
    max_upload_mb: float = 20.0
    request_timeout_s: float = 300.0

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


def list_raft_sets(settings: UISettings) -> list[Path]:
    """The RAFT builder's generated sets (folders with a `chat.jsonl`), newest first."""
    root = settings.raft_sets_dir
    if not root.is_dir():
        return []
    sets = [p for p in root.iterdir() if (p / "chat.jsonl").is_file()]
    return sorted(sets, key=lambda p: p.stat().st_mtime, reverse=True)


def load_ui_settings(**overrides: object) -> UISettings:
    """Settings from env and `.env`, with non-None `overrides` on top."""
    return UISettings(**{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Backend:
    """Where answers come from. `target`: the server URL or the model path / hub id."""

    mode: Mode
    target: str
    api_key: str = ""

    @property
    def label(self) -> str:
        return f"server {self.target}" if self.mode == "server" else f"in-process model {self.target}"


def resolve_backend(settings: UISettings) -> Backend:
    """The server when `server_url` is set, else the configured model, else the tiny model in the
    data dir (its path; `local_model_path` makes it on first use)."""
    if settings.server_url:
        url = settings.server_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        return Backend("server", url, settings.api_key)
    return Backend("in-process", settings.model or str(settings.tiny_model_dir))


def local_model_path(settings: UISettings) -> str:
    """The in-process model: the configured one, or the tiny model (written on first use)."""
    if settings.model:
        return settings.model
    tiny = settings.tiny_model_dir
    if not (tiny / "model.safetensors").is_file():
        from jamba_runtime.tiny import make_tiny_model

        make_tiny_model(tiny)
    return str(tiny)


def is_random_test_model(name_or_path: str | None) -> bool:
    """True for the tiny random Jamba: the name the server gives it, or a checkpoint directory with
    its shape (the config `jamba_runtime.tiny` writes)."""
    if not name_or_path:
        return False
    if name_or_path == TINY_SERVED_NAME:
        return True
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return False
    from jamba_runtime.tiny import TINY_CONFIG

    try:
        raw = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    keys = ("hidden_size", "vocab_size", "num_hidden_layers", "num_experts", "intermediate_size")
    return all(raw.get(k) == TINY_CONFIG[k] for k in keys)


def make_chat_model(settings: UISettings) -> ChatModel:
    """The `ChatModel` for the resolved backend. In-process, this loads the model (seconds to
    minutes): cache it. Raises `ModelNotFoundError` / `CheckpointError` for a bad model."""
    backend = resolve_backend(settings)
    if backend.mode == "server":
        # No retries: a page should say at once that the server is down, not after backoffs.
        return RemoteChatModel(
            backend.target,
            api_key=backend.api_key or None,
            timeout=settings.request_timeout_s,
            max_retries=0,
        )
    from jamba_runtime.llm import LLM

    return LocalChatModel(LLM(local_model_path(settings), device=settings.device, dtype=settings.dtype))


# ---- runtime facts -------------------------------------------------------------------------------
@dataclass
class RuntimeInfo:
    """What the Runtime page shows. `metrics` holds the Prometheus samples by name (labelled
    samples summed), in-process the same names computed from the engine."""

    mode: Mode
    model: str
    status: str = "ok"
    root: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    random_weights: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value}; samples of one name with different labels are
    summed (e.g. `jamba_http_requests_total` over routes and statuses)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def server_runtime_info(url: str, api_key: str = "", timeout: float = 5.0) -> RuntimeInfo:
    """GET /health, /v1/models and /metrics of a jamba-stack server. Raises
    `ServerUnavailableError` when it does not answer."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url, timeout=timeout, headers=headers) as http:
            health = http.get("/health")
            models = http.get("/v1/models")
            metrics = http.get("/metrics")
    except httpx.TransportError as exc:
        raise ServerUnavailableError(
            f"cannot reach the API server at {url} ({exc}): start it with `jamba-stack serve` "
            "(or `jamba-stack up`), or fix JAMBA_STACK_SERVER_URL"
        ) from None
    status = "ok" if health.status_code == 200 else f"unhealthy ({health.status_code}: {health.text[:200]})"
    card: dict[str, Any] = {}
    if models.status_code == 200 and models.json().get("data"):
        card = models.json()["data"][0]
    elif models.status_code == 401:
        status += "; /v1/models refused the API key: set JAMBA_STACK_API_KEY to the server's key"
    name = str(card.get("id", "unknown"))
    root = card.get("root")
    return RuntimeInfo(
        mode="server",
        model=name,
        status=status,
        root=root,
        max_model_len=card.get("max_model_len"),
        random_weights=is_random_test_model(name) or is_random_test_model(root),
        metrics=parse_prometheus(metrics.text) if metrics.status_code == 200 else {},
    )


def local_runtime_info(model: LocalChatModel, name: str) -> RuntimeInfo:
    """The same facts from an in-process model's engine (no HTTP)."""
    llm = model.llm
    m = llm.engine.metrics()
    param = next(llm.model.parameters())
    metrics = {
        "jamba_requests_running": float(m.running),
        "jamba_requests_waiting": float(m.waiting),
        "jamba_kv_blocks_used": float(m.kv_blocks_used),
        "jamba_kv_blocks_total": float(m.kv_blocks_total),
        "jamba_state_slots_used": float(m.state_slots_used),
        "jamba_state_slots_total": float(m.state_slots_total),
        "jamba_prefix_snapshots": float(m.snapshots),
        "jamba_kv_cache_usage_ratio": m.kv_blocks_used / m.kv_blocks_total if m.kv_blocks_total else 0.0,
        "jamba_generation_tokens_per_second": m.generation_tokens_per_s,
        "jamba_mean_time_to_first_token_seconds": m.mean_time_to_first_token_s,
        "jamba_prompt_tokens_total": float(m.prompt_tokens_total),
        "jamba_generation_tokens_total": float(m.generation_tokens_total),
        "jamba_preemptions_total": float(m.preemptions_total),
    }
    return RuntimeInfo(
        mode="in-process",
        model=name,
        device=str(param.device),
        dtype=str(param.dtype).removeprefix("torch."),
        max_model_len=llm.max_model_len,
        random_weights=is_random_test_model(name),
        metrics=metrics,
    )


def check_server(url: str, timeout: float = 3.0) -> None:
    """Raise `ServerUnavailableError` unless GET /health answers 200."""
    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.TransportError as exc:
        raise ServerUnavailableError(
            f"cannot reach the API server at {url} ({exc}): start it with `jamba-stack serve` "
            "(or `jamba-stack up`), or fix JAMBA_STACK_SERVER_URL"
        ) from None
    if r.status_code != 200:
        raise ServerUnavailableError(
            f"the API server at {url} is unhealthy ({r.status_code}: {r.text[:200]}): see its log"
        )
