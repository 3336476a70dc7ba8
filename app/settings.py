"""The one settings object: `JAMBA_STACK_*` env vars, a `.env` file, and CLI flags on top.

Read only at the entry points (the CLI, the server, the web app); the libraries below them take
objects and paths, never a settings lookup. `load_settings` turns every bad value (a flag, a
variable, a `.env` line, a `.env` that is not UTF-8) into one `SettingsError` naming where the
value came from and what to put there instead.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jamba_runtime.errors import JambaStackError

ENV_PREFIX = "JAMBA_STACK_"
ENV_FILE = ".env"
DEFAULT_DATA_DIR = Path("data")
DTYPES = ("float32", "bfloat16", "float16")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class SettingsError(JambaStackError):
    """A setting has a value the stack cannot use, or the `.env` file cannot be read."""

    http_status = 400
    code = "invalid_setting"


class Settings(BaseSettings):
    """Where data lives and which model runs.

    Attributes:
        data_dir: everything the stack writes (models it makes, collections, indexes). Default:
            `data` in the current folder, made absolute when the settings are read (so every
            command and message names one place; run from another folder, pass `--data-dir` or
            set `JAMBA_STACK_DATA_DIR` to reach the same store).
        model: checkpoint directory or hub id; empty means the embedded tiny model in the data dir.
        device, dtype: where and how the runtime runs the model (cpu, cuda or cuda:N;
            float32, bfloat16 or float16).
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
        ui_allowed_hosts: Host names, comma-separated, the web app answers besides the loopback
            names (localhost, 127.0.0.1, ::1), e.g. the name of a reverse proxy in front of it;
            its websocket refuses any other Host (no DNS rebinding).

    Example:
        >>> Settings(data_dir="/srv/jamba").tiny_model_dir
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=ENV_FILE, extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR)
    model: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    api_key: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
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
    max_upload_mb: float = Field(default=20.0, gt=0, allow_inf_nan=False)
    request_timeout_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    ui_allowed_hosts: str = ""

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        path = value.expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ValueError("is a file, not a folder: name a folder (it is made if missing)")
        return path

    @field_validator("host")
    @classmethod
    def _resolvable_host(cls, value: str) -> str:
        # Checked only when given (not the default): a name the server cannot bind would otherwise
        # surface as uvicorn's bare "Name or service not known" after the model has loaded.
        try:
            socket.getaddrinfo(value, None)
        except (OSError, UnicodeError):
            raise ValueError(
                "is not an address or a name of this machine: use 127.0.0.1 (this machine only) or 0.0.0.0 "
                "(every interface; set an API key)"
            ) from None
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("is not a device the runtime runs on: use cpu, cuda or cuda:N (lower case)")
        return value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"is not supported: use {', '.join(DTYPES)}")
        return value

    @property
    def web_app_hosts(self) -> list[str]:
        """The Host names the web app accepts: loopback, then `ui_allowed_hosts`."""
        extra = [h.strip() for h in self.ui_allowed_hosts.split(",") if h.strip()]
        return list(dict.fromkeys([*LOOPBACK_HOSTS, *extra]))

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
    """Settings from env and `.env`, with non-None `overrides` (CLI flags) on top.

    Raises `SettingsError` naming the flag, variable or `.env` line that holds a bad value (and
    the values it takes), or the `.env` file that cannot be read."""
    given = {k: v for k, v in overrides.items() if v is not None}
    env_file = Path(ENV_FILE).absolute()
    try:
        return Settings(**given)
    except ValidationError as e:
        raise SettingsError("; ".join(_describe(err, given, env_file) for err in e.errors())) from None
    except UnicodeDecodeError as e:
        raise SettingsError(
            f"{env_file} is not UTF-8 text (byte {e.object[e.start]:#04x} at position {e.start}): save it "
            "as UTF-8 or remove it"
        ) from None
    except OSError as e:
        raise SettingsError(f"cannot read {env_file}: {e.strerror or e}: fix it or remove it") from None


def _describe(err: dict, given: dict[str, object], env_file: Path) -> str:
    """One pydantic error as "<flag or variable>=<value> [(where)] <what is wrong>"."""
    name = str(err["loc"][0]) if err.get("loc") else "?"
    var = ENV_PREFIX + name.upper()
    if name in given:
        label, origin = "--" + name.replace("_", "-"), ""
    elif any(k.upper() == var for k in os.environ):
        label, origin = var, " (environment)"
    elif env_file.is_file():
        label, origin = var, f" (in {env_file})"
    else:
        label, origin = var, ""
    value = err.get("input")
    shown = repr(str(value)) if isinstance(value, Path) else repr(value)
    message = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    if err.get("type") != "value_error":
        message = f"is invalid ({message[:1].lower()}{message[1:]})"
    return f"{label}={shown}{origin} {message}"
