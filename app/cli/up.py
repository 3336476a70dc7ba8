"""`jamba-stack up`: the API server and the web app on loopback, stopped together.

Starts `jamba-stack serve` (as `python -m jamba_stack.app.cli serve`, so no PATH lookup) and
`streamlit run` on the web app's `app.py` (headless) as child processes, points the app at the server through
`JAMBA_STACK_SERVER_URL`, waits for both to answer their health checks, prints the URLs, and
waits. Ctrl-C or SIGTERM stops both (SIGINT to the server so it drains and frees the engine,
SIGTERM to Streamlit; SIGKILL after a grace period). When the API server exits on its own (its
engine died, or it was killed), it is restarted, at most `MAX_RESTARTS` times within
`RESTART_WINDOW_S`, with a line saying why; past that, or when the web app exits, the other is
stopped too and `up` exits non-zero.

Chroma is the embedded store in the data dir unless `JAMBA_STACK_CHROMA_URL` names a server.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.cli.options import DataDir, DeviceOpt, DtypeOpt, InvalidOptionError, ModelOpt
from jamba_stack.app.settings import Settings, load_settings


def web_app_file() -> Path:
    """The web app's script, found without importing it (the CLI does not import the web app)."""
    spec = importlib.util.find_spec("jamba_stack.ui")
    assert spec is not None and spec.submodule_search_locations, "jamba_stack.ui is installed with the CLI"
    return Path(next(iter(spec.submodule_search_locations))) / "app.py"


STREAMLIT_HEALTH_PATH = "/_stcore/health"
API_HEALTH_PATH = "/health"
MAX_RESTARTS = 3  # restarts of the API server allowed within RESTART_WINDOW_S
RESTART_WINDOW_S = 600.0


class StackStartError(JambaStackError):
    """A service of `jamba-stack up` did not start (exited, or no health answer in time)."""

    http_status = 500
    code = "stack_start_failed"


@dataclass
class Service:
    """A child process and where it answers its health check."""

    name: str
    args: list[str]
    health_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM
    log_start: int = 0  # where this run's lines begin in the log (it keeps earlier runs')

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # A log file, not a pipe: nobody reads a pipe while we wait, and a full pipe blocks the child.
        with self.log.open("ab") as out:
            self.log_start = out.tell()
            # Runs append to one file: a header tells them apart for a person reading it.
            out.write(f"--- {self.name}, started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """Signal the child, wait up to `grace_s`, then kill it. Idempotent."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of this run's log (earlier runs' lines left out)."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def exit_reason(self) -> str:
        """Why the child ended, in one line: its exit status and its last error line, if any."""
        status = self.proc.returncode if self.proc is not None else None
        if status is not None and status < 0:
            how = f"was killed by {signal.Signals(-status).name}"
        else:
            how = f"exited with status {status}"
        errors = [line.strip() for line in self.log_tail().splitlines() if _ERROR_LINE.search(line)]
        return how + (f" ({errors[-1]})" if errors else "")


_ERROR_LINE = re.compile(r"error|exception|critical|traceback", re.IGNORECASE)


def wait_healthy(service: Service, timeout_s: float) -> None:
    """Poll the service's health URL until it answers 200 from the service's own child process
    (not another server on the port). Raises `StackStartError` when the child exits, another
    process answers, or `timeout_s` passes, with the end of this run's log."""
    deadline = time.monotonic() + timeout_s
    port = httpx.URL(service.health_url).port
    while time.monotonic() < deadline:
        if not service.alive():
            raise StackStartError(
                f"{service.name} {service.exit_reason()} before it was ready; this run's log "
                f"({service.log}) ends:\n{service.log_tail()}"
            )
        try:
            answered = httpx.get(service.health_url, timeout=2).status_code == 200
        except httpx.TransportError:
            answered = False
        if answered:
            assert service.proc is not None and port is not None
            owners = listener_pids(port)
            if owners is None or service.proc.pid in owners:  # None: /proc cannot say (not Linux)
                return
            who = f"pid {', '.join(map(str, sorted(owners)))}" if owners else "a process"
            raise StackStartError(
                f"another process ({who}) answers on port {port}, not the {service.name} this run "
                "started: stop it, or choose another port (--port / --ui-port)"
            )
        time.sleep(0.25)
    raise StackStartError(
        f"{service.name} did not answer {service.health_url} within {timeout_s:.0f} s (raise "
        f"--start-timeout for a large model); this run's log ({service.log}) ends:\n{service.log_tail()}"
    )


def listener_pids(port: int) -> set[int] | None:
    """The pids of the processes holding the socket that listens on TCP `port` (IPv4 or IPv6),
    from Linux's /proc: the socket's inode in /proc/net/tcp*, then the processes whose fds point
    at it (a child that inherited the socket holds it too). Empty when nothing listens; None where
    /proc cannot say (another OS, or a listener of another user's)."""
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    # local_address is ADDR:PORT in hex; state 0A is LISTEN
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
    except OSError:
        return None
    if not inodes:
        return set()
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids: set[int] = set()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in wanted for fd in (pid_dir / "fd").iterdir()):
                pids.add(int(pid_dir.name))
        except OSError:  # a process that ended, or one we may not look into
            continue
    return pids or None


class PortInUseError(JambaStackError):
    """A port `up` was asked to use is already taken on 127.0.0.1."""

    http_status = 409
    code = "port_in_use"


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise `PortInUseError` for the first of `ports` ({flag: port}) that cannot be bound on
    127.0.0.1, or when two are the same; binds as the servers do (SO_REUSEADDR), then lets go."""
    if len(set(ports.values())) < len(ports):
        flags = " and ".join(f"{flag} {port}" for flag, port in ports.items())
        raise PortInUseError(f"{flags}: the two services need two ports; choose different ones")
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as e:
                owners = listener_pids(port)
                who = f" by pid {', '.join(map(str, sorted(owners)))}" if owners else ""
                raise PortInUseError(
                    f"port {port} on 127.0.0.1 is in use{who} ({e.strerror or e}): stop what holds it, or "
                    f"pass {flag} with a free port"
                ) from None


def web_app_command(settings: Settings, address: str, port: int) -> list[str]:
    """`streamlit run` on the web app as `up`, `jamba-stack ui` and the compose image start it:
    headless, no usage statistics, the upload limit of the settings, and a Host allow-list (the
    loopback names and `ui_allowed_hosts`) so its websocket refuses a forged Host (DNS rebinding)."""
    ui = [sys.executable, "-m", "streamlit", "run", str(web_app_file())]
    ui += ["--server.headless", "true", "--server.address", address, "--server.port", str(port)]
    ui += ["--server.maxUploadSize", str(max(1, math.ceil(settings.max_upload_mb)))]
    ui += ["--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    ui += ["--server.enableCORS", "true", "--server.enableXsrfProtection", "true"]
    for host in settings.web_app_hosts:
        ui += ["--server.allowedHosts", host]
    return ui


def stack_services(
    settings: Settings, api_port: int, ui_port: int, log_dir: Path, serve_args: list[str] | None = None
) -> tuple[Service, Service]:
    """The server and the web app as `up` starts them, on 127.0.0.1."""
    data_dir = str(settings.data_dir.resolve())
    api_url = f"http://127.0.0.1:{api_port}"
    serve = [
        sys.executable,
        "-m",
        "jamba_stack.app.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(api_port),
    ]
    serve += ["--data-dir", data_dir, "--device", settings.device, "--dtype", settings.dtype]
    if settings.model:
        serve += ["--model", settings.model]
    serve += serve_args or []
    # Children inherit this environment (PATH, HOME, API key, Chroma URL); what they must agree on
    # is set explicitly.
    env = {**os.environ, "JAMBA_STACK_DATA_DIR": data_dir}
    server = Service("API server", serve, api_url + API_HEALTH_PATH, log_dir / "server.log", env)
    server.stop_signal = signal.SIGINT  # uvicorn drains on SIGINT, then the engine shuts down
    ui = web_app_command(settings, "127.0.0.1", ui_port)
    ui_env = {**env, "JAMBA_STACK_SERVER_URL": api_url}
    app = Service(
        "web app", ui, f"http://127.0.0.1:{ui_port}{STREAMLIT_HEALTH_PATH}", log_dir / "ui.log", ui_env
    )
    return server, app


class _Stop(Exception):
    pass


def run_stack(server: Service, app: Service, start_timeout_s: float, echo=print) -> int:  # noqa: ANN001
    """Start both, wait until healthy, then until a signal or a child's exit; always stop both.
    Returns the exit status: 0 after Ctrl-C / SIGTERM, 1 when a service failed."""

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        wait_healthy(server, start_timeout_s)
        app.start()
        wait_healthy(app, 120)
        pid = server.proc.pid if server.proc else "?"
        echo(f"API server: {server.health_url.removesuffix(API_HEALTH_PATH)}  (pid {pid}, log {server.log})")
        echo(f"Web app:    {app.health_url.removesuffix(STREAMLIT_HEALTH_PATH)}  (log {app.log})")
        echo("Ctrl-C stops both.")
        restarts: list[float] = []
        while True:
            while server.alive() and app.alive():
                time.sleep(0.5)
            if not app.alive():
                echo(f"error: the {app.name} {app.exit_reason()}; its log ends:\n{app.log_tail()}")
                return 1
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S]
            if len(restarts) >= MAX_RESTARTS:
                echo(
                    f"error: the {server.name} {server.exit_reason()}; it exited {MAX_RESTARTS + 1} times within "
                    f"{RESTART_WINDOW_S:.0f} s, so it is not restarted again; its log ends:\n{server.log_tail()}"
                )
                return 1
            restarts.append(now)
            echo(f"the {server.name} {server.exit_reason()}: restarting it ({len(restarts)}/{MAX_RESTARTS})")
            server.start()
            wait_healthy(server, start_timeout_s)
            echo(f"the {server.name} is back (pid {server.proc.pid if server.proc else '?'})")
    except _Stop as stop:
        echo(f"{stop}: stopping...")
        return 0
    except StackStartError as exc:
        echo(f"error: {exc}")
        return 1
    finally:
        # Ignore a second Ctrl-C while stopping: a half-stopped stack is worse than a short wait.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        app.stop()
        server.stop()
        for s, handler in old.items():
            signal.signal(s, handler)


def up_cmd(
    model: ModelOpt = None,
    data_dir: DataDir = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    port: Annotated[int, typer.Option("--port", help="The API server's port on 127.0.0.1.")] = 8000,
    ui_port: Annotated[int, typer.Option("--ui-port", help="The web app's port on 127.0.0.1.")] = 8501,
    start_timeout: Annotated[
        float, typer.Option("--start-timeout", help="Seconds to wait for the server to load the model.")
    ] = 600.0,
) -> None:
    """Start the API server and the web app on loopback (embedded Chroma unless
    JAMBA_STACK_CHROMA_URL is set); Ctrl-C stops both."""
    from jamba_stack.chat import is_random_test_model

    settings = load_settings(data_dir=data_dir, model=model, device=device, dtype=dtype)
    if not settings.model or is_random_test_model(settings.model):
        typer.echo(
            "note: no model configured, so the tiny random-weight test model answers (gibberish); "
            "pass --model DIR or set JAMBA_STACK_MODEL for real answers.",
            err=True,
        )
    for flag, value in (("--port", port), ("--ui-port", ui_port)):
        if not 1 <= value <= 65535:
            raise InvalidOptionError(f"{flag} {value} is not a TCP port: use 1-65535")
    if not math.isfinite(start_timeout) or start_timeout <= 0:
        raise InvalidOptionError(f"--start-timeout {start_timeout} is invalid: use seconds above 0")
    check_ports_free({"--port": port, "--ui-port": ui_port})
    server, app = stack_services(settings, port, ui_port, settings.data_dir / "logs")
    raise typer.Exit(run_stack(server, app, start_timeout, echo=typer.echo))


def ui_cmd(
    data_dir: DataDir = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; 0.0.0.0 in a container that publishes the port.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The web app's port.")] = 8501,
) -> None:
    """Run the web app alone (Streamlit, in the foreground), as `up` starts it: headless, no usage
    statistics, Host allow-list (loopback names and JAMBA_STACK_UI_ALLOWED_HOSTS). It chats with
    JAMBA_STACK_SERVER_URL when set, else loads the model in its own process."""
    settings = load_settings(data_dir=data_dir)
    if not 1 <= port <= 65535:
        raise InvalidOptionError(f"--port {port} is not a TCP port: use 1-65535")
    try:
        if not host.strip():  # Streamlit would read an empty address as every interface
            raise OSError("empty")
        socket.getaddrinfo(host, port)
    except (OSError, UnicodeError):
        raise InvalidOptionError(
            f"--host {host!r} is not an address of this machine: use 127.0.0.1, or 0.0.0.0 in a container"
        ) from None
    command = web_app_command(settings, host, port)
    env = {**os.environ, "JAMBA_STACK_DATA_DIR": str(settings.data_dir)}
    # exec: Streamlit takes this process over, so signals (docker stop, Ctrl-C) reach it directly.
    os.execve(command[0], command, env)
