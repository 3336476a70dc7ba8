"""The house stays as built: every import-linter contract holds (packages and the runtime's wings
import only down, `.importlinter`), and the code is ruff-clean and ruff-formatted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_imports_point_down(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extra")
    monkeypatch.chdir(ROOT)
    code = cli.lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True)
    assert code == 0, "an import points up: run `lint-imports` for the chain"


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args: list[str]) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is in the test extra")
    result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
