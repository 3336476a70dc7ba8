from __future__ import annotations

from pathlib import Path

import pytest

from jamba_stack.app.settings import load_settings


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAMBA_STACK_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("JAMBA_STACK_MODEL", "some/model")
    s = load_settings()
    assert s.data_dir == tmp_path / "from-env" and s.model == "some/model"
    s = load_settings(data_dir=tmp_path / "from-flag", model=None)
    assert s.data_dir == tmp_path / "from-flag" and s.model == "some/model"
    assert s.tiny_model_dir == tmp_path / "from-flag" / "models" / "tiny"


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("JAMBA_STACK_DATA_DIR", "JAMBA_STACK_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".env").write_text("JAMBA_STACK_API_KEY=secret\nJAMBA_STACK_DATA_DIR=dotenv-data\n")
    s = load_settings()
    assert s.api_key == "secret" and s.data_dir == tmp_path / "dotenv-data"  # made absolute
