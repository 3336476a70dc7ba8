"""An agent whose model is an OpenAI-compatible base URL: `jamba-stack serve` on the tiny model, as a
subprocess on loopback; its constrained tool calls validate and run, then it answers."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from weather_tools import check_tool_steps, make_agent

from jamba_stack.agents import Policy
from jamba_stack.chat import RemoteChatModel


def _app_conftest():  # noqa: ANN202 - tests/app's server helpers, loaded by path
    spec = importlib.util.spec_from_file_location(
        "_app_conftest", Path(__file__).parents[1] / "app" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["_app_conftest"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_model_as_server_url(tiny_model_dir: Path, tmp_path: Path) -> None:
    helpers = _app_conftest()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_STACK_")}
    env.update(JAMBA_STACK_API_KEY=helpers.API_KEY, OMP_NUM_THREADS="1")
    server = helpers._start(tiny_model_dir, tmp_path, ["--max-model-len", "4096"], env)
    try:
        remote = make_agent(server.url, api_key=helpers.API_KEY, policy=Policy(max_steps=4))
        assert isinstance(remote.model, RemoteChatModel)
        result = remote.run("Weather in Paris?")
        assert result.stop_reason == "final" and result.steps == 3
        check_tool_steps(result)
    finally:
        helpers._stop(server)
