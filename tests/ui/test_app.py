"""Every page of the web app under Streamlit's AppTest, driving the real pipeline: uploads are
saved and ingested into a real Chroma with the real embedder, questions are answered by the tiny
model in-process (or by a real `jamba-stack serve` on loopback), and bad input shows one clear
`st.error` line, never a traceback."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the web app needs streamlit (pip install -e '.[ui]')")

from streamlit.testing.v1 import AppTest  # noqa: E402
from ui_procs import BIN, Proc, clean_env, free_port, start_process

from jamba_stack.ui.backend import RANDOM_WEIGHTS_NOTICE
from jamba_stack.ui.documents import sanitize_filename

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"
TIMEOUT = 240  # seconds per script run: the first loads the embedder and the model on one core
NOTES = (
    b"# Key rotation\n\nRotate the API key every 90 days from the admin console.\n\n"
    b"# Backups\n\nBackups of the vector store run nightly at 02:00 and are kept for 30 days.\n"
)


def app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


def errors(at: AppTest) -> list[str]:
    assert not at.exception, [e.message for e in at.exception]
    return [e.value for e in at.error]


def upload(at: AppTest, files: list[tuple[str, bytes, str]], collection: str = "docs") -> AppTest:
    at.switch_page("views/documents.py").run()
    at.text_input(key="doc_collection").set_value(collection)
    at.file_uploader(key="doc_uploads").set_value(files)
    at.run()
    return at.button(key="doc_ingest").click().run()


def test_upload_ingest_ask_cite_and_delete_on_the_tiny_model(ui_env: Path) -> None:
    at = app()
    assert not errors(at)
    assert any("No collections yet" in i.value for i in at.info)  # chat page first, nothing ingested

    upload(at, [("../../etc/My Notes.md", NOTES, "text/markdown")])
    assert not errors(at)
    assert any("2 chunks added" in s.value for s in at.success), [s.value for s in at.success]
    saved = ui_env / "uploads" / "docs" / "My_Notes.md"
    assert saved.read_bytes() == NOTES  # the name was sanitized and kept inside the data dir
    assert [p.name for p in ui_env.rglob("*.md")] == ["My_Notes.md"]
    assert "My_Notes.md" in at.dataframe[0].value["file"].tolist()

    at.switch_page("views/chat.py").run()
    assert RANDOM_WEIGHTS_NOTICE in [w.value for w in at.warning]
    assert at.selectbox(key="chat_collection").value == "docs"
    at.number_input(key="chat_max").set_value(24)
    at.chat_input[0].set_value("How often is the API key rotated?").run()
    assert not errors(at)
    # The question, then the streamed answer with its citations, each opening to its chunk.
    assert at.chat_message[0].markdown[0].value == "How often is the API key rotated?"
    labels = [e.label for e in at.expander]
    assert labels and all(re.match(r"\[\d+\] My_Notes\.md", label) for label in labels), labels
    texts = [t.value for t in at.text]
    assert any("Rotate the API key every 90 days" in t for t in texts)
    history = at.session_state["chat_history"]["docs"]
    assert [t["role"] for t in history] == ["user", "assistant"]
    assert history[1]["citations"][0]["source"] == str(saved.resolve())

    at.run()  # the conversation is kept across reruns of the session
    assert at.chat_message[0].markdown[0].value == "How often is the API key rotated?"
    assert len(at.chat_message) == 2

    at.switch_page("views/documents.py").run()
    at.button(key="doc_del_docs").click().run()
    assert not errors(at)
    assert any("Deleted My_Notes.md: 2 chunks" in s.value for s in at.success)
    assert not saved.exists()
    assert "0 chunks" in at.expander[0].label


def test_bad_uploads_and_an_empty_question_show_clear_errors(ui_env: Path) -> None:
    at = app()
    big = b"x" * (80 * 1024)  # the test limit is 64 KB
    upload(at, [("tool.exe", b"MZ\x00", "application/octet-stream"), ("big.txt", big, "text/plain")])
    shown = errors(at)
    assert any("'tool.exe' is a .exe, which cannot be ingested" in e and ".pdf" in e for e in shown), shown
    assert any("'big.txt' is 0.0781 MB, over the 0.0625 MB limit" in e for e in shown), shown
    assert not (ui_env / "uploads" / "docs").exists() or not any((ui_env / "uploads" / "docs").iterdir())

    upload(at, [("ok.txt", b"Glaciers carve valleys over thousands of years.", "text/plain")], "geo")
    at.switch_page("views/chat.py").run()
    at.chat_input[0].set_value("   ").run()
    assert errors(at) == ["Could not answer the question: it is empty. Type a question first."]
    assert at.session_state["chat_history"]["geo"] == []


def test_server_down_is_a_clear_message(ui_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAMBA_STACK_SERVER_URL", f"http://127.0.0.1:{free_port()}")
    at = app()
    upload(at, [("ok.txt", b"Glaciers carve valleys over thousands of years.", "text/plain")])
    assert not errors(at)
    at.switch_page("views/chat.py").run()
    at.chat_input[0].set_value("What carves valleys?").run()
    (message,) = errors(at)
    assert message.startswith("Could not answer the question: cannot reach the server at http://127.0.0.1:")
    assert "jamba-stack serve" in message
    at.switch_page("views/runtime.py").run()
    (message,) = errors(at)
    assert "cannot reach the API server" in message and "JAMBA_STACK_SERVER_URL" in message


def test_playground_json_schema_output_parses(ui_env: Path) -> None:
    at = app()
    at.switch_page("views/playground.py").run()
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    at.text_area(key="pg_schema").set_value(json.dumps(schema))
    at.button(key="pg_run").click().run()
    assert not errors(at)
    raw = at.code[0].value
    parsed = json.loads(raw)
    assert set(parsed) == {"ok", "n"} and isinstance(parsed["ok"], bool) and 0 <= parsed["n"] <= 9
    assert json.loads(at.json[0].value) == parsed

    at.radio(key="pg_mode").set_value("Tools").run()
    at.button(key="pg_run").click().run()
    assert not errors(at)
    calls = json.loads(at.json[0].value)  # tool_choice "required": one call or more, schema-valid
    assert calls and all(c["name"] == "get_weather" for c in calls)
    assert all(c["arguments"]["unit"] in ("celsius", "fahrenheit") for c in calls)

    at.radio(key="pg_mode").set_value("JSON schema").run()
    at.text_area(key="pg_schema").set_value('{"type": "object",')
    at.button(key="pg_run").click().run()
    (message,) = errors(at)
    assert (
        message.startswith("Could not run the prompt: the schema is not valid JSON (") and "line 1" in message
    )
    at.text_area(key="pg_prompt").set_value("  ")
    at.button(key="pg_run").click().run()
    assert errors(at) == ["Could not run the prompt: the prompt is empty: type what the model should answer"]


def test_runtime_page_in_process(ui_env: Path, tiny_model_dir: Path) -> None:
    at = app()
    at.switch_page("views/runtime.py").run()
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == str(tiny_model_dir)
    assert metrics["Device"] == "cpu" and metrics["dtype"] == "float32"
    assert metrics["Context length"] == "262,144"
    assert metrics["Waiting"] == "0" and metrics["KV cache use"].endswith("%")
    assert RANDOM_WEIGHTS_NOTICE in [w.value for w in at.warning]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Proc:
    work = tmp_path_factory.mktemp("serve")
    port = free_port()
    args = [str(BIN / "jamba-stack"), "serve", "--model", str(tiny_model_dir), "--port", str(port)]
    args += ["--data-dir", str(work)]
    p = start_process("server", args, f"http://127.0.0.1:{port}", "/health", work / "server.log", clean_env())
    yield p
    p.stop(signal.SIGINT)


def test_runtime_page_and_chat_against_a_server(
    ui_env: Path, monkeypatch: pytest.MonkeyPatch, api_server: Proc, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("JAMBA_STACK_SERVER_URL", api_server.url)
    at = app()
    upload(at, [("notes.md", NOTES, "text/markdown")])
    at.switch_page("views/chat.py").run()
    assert RANDOM_WEIGHTS_NOTICE in [w.value for w in at.warning]  # the served checkpoint is the tiny one
    at.number_input(key="chat_max").set_value(16)
    at.chat_input[0].set_value("When do backups run?").run()
    assert not errors(at)
    assert any("Backups of the vector store run nightly" in t.value for t in at.text)
    at.switch_page("views/runtime.py").run()
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == str(tiny_model_dir)  # served under its --model path
    assert float(metrics["Generated tokens"].replace(",", "")) >= 1  # the chat above was counted
    assert metrics["Context length"] == "262,144"


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("..\\..\\boot.ini.TXT", "boot.ini.txt"),
        (".hidden.md", "hidden.md"),
        ("r\u00e9sum\u00e9 final (v2).pdf", "resume_final_v2_.pdf"),
        ("/", "upload"),
        ("a" * 300 + ".md", "a" * 117 + ".md"),
    ],
)
def test_sanitize_filename(name: str, safe: str) -> None:
    assert sanitize_filename(name) == safe


def test_agents_page_runs_a_goal_and_shows_tool_calls_denials_and_the_end(ui_env: Path) -> None:
    at = app()
    at.switch_page("views/agents.py").run()
    assert not errors(at)
    at.radio(key="ag_choice").set_value("first")  # the tiny model must call a tool on step 0
    at.button(key="ag_run").click().run()
    assert not errors(at)
    shown = [m.value for m in at.markdown]
    assert "**Tool call** `calculator`" in shown
    assert any(m.startswith(("**Tool result** `calculator`", "**Tool error** `calculator`")) for m in shown)
    assert any(m.startswith("**Finished** (") for m in shown)
    assert at.get("download_button")

    at.multiselect(key="ag_deny").set_value(["calculator"])
    at.button(key="ag_run").click().run()
    assert not errors(at)
    assert any(w.value.startswith("Denied `calculator`: denied by the policy") for w in at.warning)

    at.text_input(key="ag_goal").set_value(" ")
    at.button(key="ag_run").click().run()
    (message,) = errors(at)
    assert message.startswith("Could not run the agent: goal=' ' is empty")


def test_skipped_uploads_are_named_not_kept_and_not_counted(ui_env: Path) -> None:
    at = app()
    fake_pdf = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # binary data named .pdf
    upload(
        at,
        [
            ("empty.md", b"", "text/markdown"),
            ("scan.pdf", fake_pdf, "application/pdf"),
            ("ok.txt", b"Glaciers carve valleys over thousands of years.", "text/plain"),
        ],
    )
    assert not errors(at)
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("Skipped empty.md: ") and w.endswith("It was not kept.") for w in warnings), (
        warnings
    )
    assert any(w.startswith("Skipped scan.pdf: ") and "PDF" in w for w in warnings), warnings
    successes = [s.value for s in at.success]
    assert len(successes) == 1 and successes[0].startswith("Ingested 1 of 3 file(s) into 'docs'"), successes
    folder = ui_env / "uploads" / "docs"
    assert sorted(p.name for p in folder.iterdir()) == ["ok.txt"]  # nothing unusable stays behind

    upload(at, [("blank.txt", b"", "text/plain")], "docs")  # only a bad file: no success at all
    assert not at.success
    assert any(e.startswith("Nothing was ingested into 'docs'") for e in errors(at))
    assert sorted(p.name for p in folder.iterdir()) == ["ok.txt"]

    # A file in the upload folder that never reached the collection is listed, with a delete button
    (folder / "stray.md").write_text("never ingested")
    at.switch_page("views/documents.py").run()
    assert any("stray.md" in w.value and "not in the collection" in w.value for w in at.warning)
    at.button(key="doc_strays_docs").click().run()
    assert not errors(at)
    assert sorted(p.name for p in folder.iterdir()) == ["ok.txt"]


def test_internal_raft_collections_stay_out_of_lists_and_pickers(ui_env: Path) -> None:
    from jamba_stack.retrieval.ingest import ingest

    notes = ui_env.parent / "notes.md"
    notes.write_bytes(NOTES)
    for name in ("raft-0123456789abcdef", "handbook"):  # RAFT's corpus collection, and a person's
        ingest(notes, name, data_dir=ui_env, embedder="minilm-fp32")
    at = app()
    assert at.selectbox(key="chat_collection").options == ["handbook"]
    at.switch_page("views/documents.py").run()
    assert [e.label.split(" \u00b7 ")[0] for e in at.expander] == ["handbook"]
    at.switch_page("views/agents.py").run()
    at.multiselect(key="ag_tools").set_value(["calculator", "search"]).run()
    assert at.selectbox(key="ag_collection").options == ["handbook"]


def test_agent_run_survives_a_rerun(ui_env: Path) -> None:
    at = app()
    at.switch_page("views/agents.py").run()
    at.radio(key="ag_choice").set_value("first")
    at.button(key="ag_run").click().run()
    assert not errors(at)
    before = [m.value for m in at.markdown]
    assert "**Tool call** `calculator`" in before and at.get("download_button")
    at.number_input(key="ag_steps").set_value(4).run()  # any widget reruns the page, as a download did
    assert not errors(at)
    after = [m.value for m in at.markdown]
    assert "**Tool call** `calculator`" in after and any(m.startswith("**Finished** (") for m in after)
    assert at.get("download_button")


def test_use_for_chat_under_a_server_says_only_what_is_true(
    ui_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = ui_env / "raft" / "adapters" / "a1"
    (adapter / "merged").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "merged" / "config.json").write_text("{}")
    monkeypatch.setenv("JAMBA_STACK_SERVER_URL", f"http://127.0.0.1:{free_port()}")
    at = app()
    at.session_state["model_override"] = str(adapter / "merged")  # set before the server was configured
    at.switch_page("views/finetune.py").run()
    assert at.button(key="ft_use").disabled
    assert not at.success  # no "Chat uses ..." while the server's model answers
    assert any("serve this adapter's merged checkpoint" in i.value for i in at.info)


def test_an_empty_answer_is_said_not_shown_as_an_empty_bubble(ui_env: Path) -> None:
    at = app()
    upload(at, [("ok.txt", b"Glaciers carve valleys over thousands of years.", "text/plain")])
    at.switch_page("views/chat.py").run()
    turn = {"role": "assistant", "content": "", "citations": [], "uncited": True, "finish_reason": "stop"}
    at.session_state["chat_history"] = {"docs": [{"role": "user", "content": "What carves valleys?"}, turn]}
    at.run()
    assert len(at.chat_message) == 2
    assert any(i.value.startswith("The model returned an empty answer") for i in at.chat_message[1].info)


def test_raw_playground_output_wraps(ui_env: Path) -> None:
    at = app()
    at.switch_page("views/playground.py").run()
    at.button(key="pg_run").click().run()
    assert not errors(at)
    assert at.code[0].proto.wrap_lines


def test_tokens_per_second_decays_to_zero_when_idle(ui_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jamba_runtime.engine import metrics

    at = app()
    at.switch_page("views/playground.py").run()
    at.button(key="pg_run").click().run()  # a burst of tokens on the in-process engine
    at.switch_page("views/runtime.py").run()
    busy = {m.label: m.value for m in at.metric}["Tokens/s (last 10 s)"]
    assert float(busy.replace(",", "")) > 0, busy
    # No step has run since; once the burst is older than the window, the rate is 0 (the window is
    # shrunk rather than the test made to wait 10 s).
    monkeypatch.setattr(metrics, "_RATE_WINDOW_S", 1e-3)
    at.run()
    assert {m.label: m.value for m in at.metric}["Tokens/s (last 10 s)"] == "0.0"
