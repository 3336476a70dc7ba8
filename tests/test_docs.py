"""Every code block in README.md and docs/*.md runs as written, unless an HTML comment right above
it says why not (`<!-- no-run: needs a GPU -->`): python blocks of one file run in order in one
interpreter (later blocks use what earlier ones made, as a reader running them would), json
blocks parse, bash blocks run under `bash -euo pipefail`. Fences without a language are text
(usage lines, outputs, diagrams) and are not run.

The blocks run in a fresh folder that holds what a reader has after the README's first command
(`jamba-stack up` made the tiny model in `./data`) and a copy of `docs/` (the retrieval guide
ingests it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"python", "bash", "sh", "json"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_NO_RUN = re.compile(r"^<!--\s*no-run:\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    no_run: str | None  # the reason given, when the block must not run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the no-run reason of the HTML comments above."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        reason, k = None, i - 1
        while k >= 0 and lines[k].startswith("<!--"):  # the comments right above the fence
            if found := _NO_RUN.match(lines[k].strip()):
                reason = found.group(1)
            k -= 1
        out.append(Block(path, i + 1, m.group(1), "\n".join(lines[i + 1 : end]) + "\n", reason))
        i = end + 1
    return out


ALL = [b for p in DOCS for b in blocks(p)]
TO_RUN = [p for p in DOCS if any(b.lang in RUNNABLE and b.no_run is None for b in blocks(p))]

# Runs the python blocks it reads from stdin (a JSON list of {where, code}) in one namespace.
_DRIVER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    print(f"--- {block['where']}", flush=True)
    try:
        exec(compile(block["code"], block["where"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED {block['where']}", flush=True)
        sys.exit(1)
"""


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("reader")
    shutil.copytree(tiny_model_dir, folder / "data" / "models" / "tiny")
    shutil.copytree(REPO / "docs", folder / "docs")
    return folder


def test_every_no_run_block_says_why() -> None:
    assert ALL, "no code blocks found"
    for block in ALL:
        assert block.no_run is None or len(block.no_run) >= 8, f"{block.where}: say why it must not run"


@pytest.mark.parametrize("path", TO_RUN, ids=lambda p: str(p.relative_to(REPO)))
def test_code_blocks_run_as_written(path: Path, reader_folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_STACK_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    todo = [b for b in blocks(path) if b.lang in RUNNABLE and b.no_run is None]
    for block in (b for b in todo if b.lang == "json"):
        try:
            json.loads(block.code)
        except json.JSONDecodeError as e:
            pytest.fail(f"{block.where}: not valid JSON ({e})")
    for block in (b for b in todo if b.lang in ("bash", "sh")):
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=reader_folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, f"{block.where}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    python = [{"where": b.where, "code": b.code} for b in todo if b.lang == "python"]
    if python:
        out = subprocess.run(
            [sys.executable, "-c", _DRIVER],
            input=json.dumps(python),
            cwd=reader_folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-4000:]}"
