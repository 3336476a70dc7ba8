"""How jamba-stack installs: every package is listed, the wheel holds only `jamba_runtime` and the
`jamba_stack` namespace, and it lives beside the OpenAI Agents SDK (whose import name is `agents`)
in one environment."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {name: folder for name, folder in setuptools["package-dir"].items()}
    folders.setdefault("jamba_runtime", "jamba_runtime")
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"unlisted: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"


@pytest.mark.slow
def test_the_wheel_installs_beside_openai_agents(tmp_path: Path) -> None:
    """Build the wheel, install it and `openai-agents` into a fresh virtual environment, and
    import both `agents` (theirs) and `jamba_stack.agents` (ours) in one process. Our other
    dependencies (torch, chromadb, ...) come from this test environment through a `.pth` line
    after the fresh environment's own packages, so nothing large is downloaded."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("jamba_stack-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("jamba_stack-")}
    assert tops == {"jamba_runtime", "jamba_stack"}, tops  # no generic top-level names
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, capture_output=True)
    subprocess.run([*pip, "openai-agents"], check=True, capture_output=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "zz_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import agents, jamba_stack.agents as ours, jamba_stack.app.cli, jamba_runtime; "
        "assert hasattr(agents, 'Runner') and hasattr(ours, 'Agent'); "
        "print(agents.__file__); print(ours.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout.split()
    assert out[0].startswith(str(env_dir)) and "/agents/" in out[0]  # theirs, from the fresh env
    assert out[1].startswith(str(env_dir)) and "/jamba_stack/agents/" in out[1]  # ours, from the wheel
