"""The runtime's layers (`.importlinter`, contract `runtime-wings`): every import points down."""

from __future__ import annotations

from pathlib import Path

import pytest

cli = pytest.importorskip("importlinter.cli", reason="import-linter is not installed (the test extra has it)")

ROOT = Path(__file__).resolve().parents[2]


def test_runtime_imports_point_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code = cli.lint_imports(
        config_filename=str(ROOT / ".importlinter"), limit_to_contracts=("runtime-wings",), no_cache=True
    )
    assert code == 0, "an import points up in jamba_runtime: run `lint-imports` for the chain"
