"""Errors a user can cause end every command in one line and exit 2, never in a traceback: bad
settings from a flag, the environment or `.env` (a bad value, a file that is not UTF-8), and bad
values of every option of every command (a negative size, NaN, a huge integer, a missing path, a
file where a folder is wanted, an empty or unknown word). Library log lines stay out of the
terminal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.cli import app
from jamba_stack.retrieval.raft.export import export_all
from jamba_stack.retrieval.store import Store

EXE = str(Path(sys.executable).parent / "jamba-stack")
NOTES = (
    "# Keys\n\nRotate the API key every 90 days from the admin console.\n\n"
    "# Backups\n\nBackups of the vector store run nightly at 02:00 and are kept for 30 days.\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_STACK_")}
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env={**base, **(env or {})}
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The command's error line; fails unless it exited 2 with one `error:` line and no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


# ---- settings: flags, environment, .env ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("demo", "--device", "gpu"), {}, ["--device='gpu'", "cpu, cuda or cuda:N"]),
        (("demo", "--device", "CPU"), {}, ["--device='CPU'", "cpu, cuda or cuda:N"]),
        (("demo",), {"JAMBA_STACK_DEVICE": "gpu"}, ["JAMBA_STACK_DEVICE='gpu' (environment)", "cuda:N"]),
        (("ask", "q", "-c", "docs", "--dtype", "fp8"), {}, ["--dtype='fp8'", "float32, bfloat16, float16"]),
        (("serve", "--port", "70000"), {}, ["--port=70000", "65535"]),
        (("serve", "--host", "no-such-host.invalid"), {}, ["--host='no-such-host.invalid'", "127.0.0.1"]),
        (("search", "q", "-c", "docs"), {"JAMBA_STACK_MAX_UPLOAD_MB": "nan"}, ["JAMBA_STACK_MAX_UPLOAD_MB"]),
    ],
)
def test_bad_settings_are_one_line(tmp_path: Path, args: tuple[str, ...], env: dict, expected: list) -> None:
    line = one_line_error(run(*args, "--data-dir", str(tmp_path / "data"), cwd=tmp_path, env=env))
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "data").exists()  # refused before anything was written


@pytest.mark.parametrize("command", [("search", "q", "-c", "docs"), ("demo",), ("ingest", ".", "-c", "docs")])
def test_a_bad_dotenv_breaks_no_command_with_a_traceback(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / ".env").write_text("JAMBA_STACK_PORT=abc\n")
    line = one_line_error(run(*command, cwd=tmp_path))
    assert f"JAMBA_STACK_PORT='abc' (in {tmp_path / '.env'})" in line and "integer" in line, line
    (tmp_path / ".env").write_bytes(b"JAMBA_STACK_MODEL=caf\xe9\n")  # latin-1, not UTF-8
    line = one_line_error(run(*command, cwd=tmp_path))
    assert f"{tmp_path / '.env'} is not UTF-8" in line and "save it as UTF-8" in line, line


# ---- every option of every command, fed bad values -------------------------------------------------

runner = CliRunner()
BLOCKING = {("serve",), ("up",), ("ui",)}  # they serve until stopped: run as processes below


def _commands(
    group: typer.core.TyperGroup, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], object]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(typer.main.get_command(app)))


# Amounts of work: a huge value is a valid request that only takes long (the huge integer is for
# overflows elsewhere), so these get the negative one only.
WORK = {
    "max_tokens",
    "question_max_tokens",
    "steps",
    "epochs",
    "retries",
    "questions_per_chunk",
    "limit",
    "max_len",
    "start_timeout",
}


# Options every command reads through the one `load_settings` (and so one validation): fed their
# bad values on the first command that has them, not again on every other.
SHARED_SETTINGS = {"data_dir", "device", "dtype", "chroma_url", "api_key"}


def bad_values(param: object, a_file: Path, a_folder: Path) -> list[str]:
    """Values of the option's type that a user can type and the command may not be able to use
    (a path that does not exist sits beside `a_file`, so nothing is made outside the test's
    folder)."""
    annotation = str(param.type_descriptor.annotation)  # type: ignore[attr-defined]
    if "bool" in annotation:
        return []
    if "int" in annotation:
        return ["-1"] if param.name in WORK else ["-1", "99999999999999999999"]  # type: ignore[attr-defined]
    if "float" in annotation:
        return ["-1", "nan"]
    if "Path" in annotation:
        return [str(a_file.parent / "missing" / "x"), str(a_file), str(a_folder)]
    return ["", "bogus"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """A folder of notes ingested into collection `docs`, and a RAFT set over it (rows exported
    directly: the commands under test only read it)."""
    root = tmp_path_factory.mktemp("cli-errors")
    docs, data = root / "docs", root / "data"
    docs.mkdir()
    (docs / "notes.md").write_text(NOTES)
    out = runner.invoke(app, ["ingest", str(docs), "-c", "docs", "--data-dir", str(data), "-q"])
    assert out.exit_code == 0, out.output
    sets = root / "set"
    sets.mkdir()
    doc = {"id": "c0", "text": "Rotate the API key every 90 days.", "source": "notes.md"}
    rows = [
        {
            "id": f"r{i}",
            "question": "How often is the key rotated?",
            "answer": "every 90 days",
            "documents": [doc],
            "oracle_present": True,
            "oracle_index": 0,
            "oracle_id": "c0",
            "oracle_text": doc["text"],
            "cot_answer": "##begin_quote##Rotate the API key every 90 days.##end_quote## <ANSWER>: every 90 days",
        }
        for i in range(2)
    ]
    export_all(sets, rows, eval_fraction=0.5, hf=False)
    collection = Store(data).list_collections()[0]
    (sets / "summary.json").write_text(json.dumps({"collection": collection, "embedder": "minilm"}))
    a_file = root / "a-file.txt"
    a_file.write_text("x")
    return {"root": root, "docs": docs, "data": data, "set": sets, "model": tiny_model_dir, "file": a_file}


def baselines(w: dict[str, Path]) -> dict[tuple[str, ...], list[str]]:
    """Arguments each command runs with; one option at a time is then replaced by a bad value.
    Small budgets keep each run short."""
    m, d = ["--model", str(w["model"])], ["--data-dir", str(w["data"])]
    raft_gen = ["--docs", str(w["docs"]), "--out", str(w["root"] / "gen"), *m, *d, "--max-chunks", "1"]
    raft_gen += ["--questions-per-chunk", "1", "--max-tokens", "8", "--question-max-tokens", "24"]
    raft_gen += ["--retries", "0", "-q", "--overwrite"]
    return {
        ("generate",): ["hi", *m, *d, "--max-tokens", "4"],
        ("chat",): [*m, *d, "--max-tokens", "4"],
        ("demo",): [*m, *d, "--max-tokens", "4"],
        ("ingest",): [str(w["docs"]), "-c", "docs", *d, "-q"],
        ("search",): ["rotate", "-c", "docs", *d],
        ("ask",): ["How often?", "-c", "docs", *m, *d, "--max-tokens", "4", "--rerank", "none"],
        ("model", "make-tiny"): [str(w["root"] / "tiny2"), "--force"],
        ("raft", "generate"): raft_gen,
        ("raft", "eval"): ["--data", str(w["set"]), *m, *d, "--max-tokens", "4", "-q", "--limit", "1"],
        ("raft", "train"): [
            "--data",
            str(w["set"]),
            "--out",
            str(w["root"] / "ad"),
            *m,
            *d,
            "--steps",
            "1",
            "-q",
        ],
    }


def with_value(args: list[str], param: object, value: str) -> list[str]:
    """`args` with `param` set to `value` (an option replaced or added; an argument replaced)."""
    opt = param.opts[0]  # type: ignore[attr-defined]
    out = list(args)
    if not opt.startswith("-"):
        out[0] = value  # every command here takes at most one argument, first
    elif opt in out:
        out[out.index(opt) + 1] = value
    else:
        out += [opt, value]
    return out


def ends_cleanly(command: tuple[str, ...], args: list[str]) -> str:
    """Run the command in this process as `jamba-stack` does (typed errors are one line); return
    the failure, or "" when it ended without a traceback."""
    result = runner.invoke(app, [*command, *args], input="")
    exc = result.exception
    if exc is None or isinstance(exc, (SystemExit, JambaStackError)):
        if isinstance(exc, JambaStackError) and "\n" in str(exc).strip():
            return f"{command} {args}: a multi-line error: {exc}"
        return ""
    return f"{command} {args}: {''.join(traceback.format_exception(exc))[-1500:]}"


def test_every_option_of_every_command_takes_bad_values_without_a_traceback(world: dict[str, Path]) -> None:
    base = baselines(world)
    assert set(base) | BLOCKING == set(COMMANDS), "a new command needs a baseline here"
    failures, shared_done = [], set()
    for command, args in base.items():
        assert ends_cleanly(command, args) == "", command
        for param in COMMANDS[command].params:  # type: ignore[attr-defined]
            if param.name in shared_done:  # type: ignore[attr-defined]
                continue
            if param.name in SHARED_SETTINGS:  # type: ignore[attr-defined]
                shared_done.add(param.name)  # type: ignore[attr-defined]
            for value in bad_values(param, world["file"], world["docs"]):
                if problem := ends_cleanly(command, with_value(args, param, value)):
                    print(problem, flush=True)  # seen at once with -s, on a long run
                    failures.append(problem)
    assert not failures, "\n\n".join(failures)


def _serve_or_fail(args: list[str], health_url: str, cwd: Path) -> str:
    """Run a blocking command as a process: it must either exit without a traceback, or serve
    (its health check answers); either way it is stopped. Returns the failure or ""."""
    log = cwd / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([EXE, *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + 180
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(health_url, timeout=1).status_code == 200:
                    return ""
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    if "Traceback" in text or proc.returncode not in (0, 2):
        return f"{args}: exit {proc.returncode}\n{text[-1500:]}"
    return ""


def test_serve_up_and_ui_take_bad_values_without_a_traceback(world: dict[str, Path], tmp_path: Path) -> None:
    cases, ports = [], set()

    def new_port() -> str:
        # the cases run at once: no two may be given the same free port
        while (port := free_port()) in ports:
            pass
        ports.add(port)
        return str(port)

    for command in sorted(BLOCKING):
        for param in COMMANDS[command].params:  # type: ignore[attr-defined]
            # The shared settings were fed above; `up` reads --model as `serve` does, and a value
            # of it that passes would start the whole stack for nothing
            name = param.name  # type: ignore[attr-defined]
            if name in SHARED_SETTINGS or (command == ("up",) and name == "model"):
                continue
            for value in bad_values(param, world["file"], world["docs"]):
                port = new_port()
                args = [*command, "--data-dir", str(world["data"]), "--port", port]
                health = f"http://127.0.0.1:{port}/health"
                if command != ("ui",):
                    args += ["--model", str(world["model"])]
                if command == ("up",):
                    args += ["--ui-port", new_port()]
                if command == ("ui",):
                    health = f"http://127.0.0.1:{port}/_stcore/health"
                cwd = tmp_path / f"case{len(cases)}"
                cwd.mkdir()
                cases.append((with_value(args, param, value), health, cwd))
    # Each case is a process that mostly waits on its imports: a few at once halve the time.
    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = list(pool.map(lambda case: _serve_or_fail(*case), cases))
    assert not any(failures), "\n\n".join(f for f in failures if f)


# ---- library log lines -------------------------------------------------------------------------------


def test_no_library_debug_or_pdf_lines_reach_the_terminal(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text(NOTES)
    (docs / "broken.pdf").write_bytes(b"not a pdf at all" * 64)
    # Any library's logging.basicConfig() gives the root logger a handler; bm25s, which sets its own
    # logger to DEBUG, then prints every index build unless the CLI keeps it quiet.
    code = "import logging, sys; logging.basicConfig(); from jamba_stack.app.cli import main; main()"
    args = [
        sys.executable,
        "-c",
        code,
        "ingest",
        str(docs),
        "-c",
        "docs",
        "--data-dir",
        str(tmp_path / "d"),
        "-q",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout and "broken.pdf" in out.stdout  # reported once, by ingest
    for noise in ("DEBUG:bm25s", "bm25s:", "pypdf", "invalid pdf header", "EOF marker"):
        assert noise not in out.stderr, out.stderr


def test_raft_generate_with_no_surviving_row_is_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text(NOTES)
    args = [
        "raft",
        "generate",
        "--docs",
        str(docs),
        "--out",
        str(tmp_path / "set"),
        "--model",
        str(tiny_model_dir),
    ]
    args += ["--max-chunks", "1", "--questions-per-chunk", "1", "--max-tokens", "6", "--retries", "0", "-q"]
    line = one_line_error(run(*args, "--data-dir", str(tmp_path / "data"), cwd=tmp_path))
    assert line.startswith("error: no row passed verification") and "max tokens" in line, line
    assert not (tmp_path / "set" / "chat.jsonl").exists()
