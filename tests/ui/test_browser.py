"""End to end in headless Chromium: the three compose services as plain processes on loopback
(`chroma run`, `jamba-stack serve` with the tiny model, `streamlit run ui/app.py` from the
repository root pointed at both); upload a document, ask, see the answer with a citation that
opens to its chunk; run an agent and download its trace (the run stays on the page); and the page
never contacts a host other than the app's own. The stand-alone app listens on loopback only and
refuses a forged Host. Screenshots land in the test's tmp dir (printed at the end).

Needs Debian's `chromium` and the `playwright` package (its driver only: the browser is
Debian's); skips with the reason when either is missing."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_procs import BIN, REPO, Proc, clean_env, free_port, start_process, websocket_status

from jamba_stack.app.cli.up import STREAMLIT_HEALTH_PATH

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"),
    pytest.mark.skipif(
        not (BIN / "streamlit").exists(), reason="streamlit is not installed (pip install -e '.[ui]')"
    ),
]

NOTES = (
    b"# Key rotation\n\nRotate the API key every 90 days from the admin console.\n\n"
    b"# Backups\n\nBackups of the vector store run nightly at 02:00 and are kept for 30 days.\n"
)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chroma_server: Proc
) -> Iterator[dict[str, Proc]]:
    work = tmp_path_factory.mktemp("stack")
    port = free_port()
    serve = [str(BIN / "jamba-stack"), "serve", "--model", str(tiny_model_dir), "--port", str(port)]
    serve += ["--data-dir", str(work / "runtime")]
    runtime = start_process(
        "runtime", serve, f"http://127.0.0.1:{port}", "/health", work / "runtime.log", clean_env()
    )
    ui_port = free_port()
    # The documented stand-alone start, from the repository root: .streamlit/config.toml supplies
    # the address, the Host allow-list and no usage statistics (headless: no browser to open here).
    ui_args = [str(BIN / "streamlit"), "run", "ui/app.py", "--server.headless", "true"]
    ui_args += ["--server.port", str(ui_port)]
    env = clean_env(
        JAMBA_STACK_SERVER_URL=runtime.url,
        JAMBA_STACK_CHROMA_URL=chroma_server.url,
        JAMBA_STACK_DATA_DIR=str(work / "ui"),
        JAMBA_STACK_EMBEDDER="minilm-fp32",  # no ONNX export on first use: a faster start
    )
    ui = start_process(
        "ui", ui_args, f"http://127.0.0.1:{ui_port}", STREAMLIT_HEALTH_PATH, work / "ui.log", env, cwd=REPO
    )
    yield {"runtime": runtime, "ui": ui}
    ui.stop(signal.SIGTERM)
    runtime.stop(signal.SIGINT)


def test_upload_ask_and_open_a_citation_in_chromium(stack: dict[str, Proc], tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(180_000)  # the first ingest loads the embedder on a shared core
        expect = playwright_api.expect
        expect.set_options(timeout=180_000)
        page.goto(stack["ui"].url)
        expect(page.get_by_text("No collections yet")).to_be_visible()
        expect(page.get_by_text("random-weight test model")).to_be_visible()  # the server runs the tiny model
        page.screenshot(path=shots / "1-empty-chat.png", full_page=True)

        page.get_by_role("link", name="Documents", exact=True).click()
        page.locator('input[type="file"]').set_input_files(
            files=[{"name": "notes.md", "mimeType": "text/markdown", "buffer": NOTES}]
        )
        expect(page.get_by_text("notes.md").first).to_be_visible()
        page.get_by_role("button", name="Ingest").click()
        expect(page.get_by_text("chunks added")).to_be_visible()
        page.screenshot(path=shots / "2-ingested.png", full_page=True)

        page.get_by_role("link", name="Chat with documents", exact=True).click()
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill("How often is the API key rotated?")
        box.press("Enter")
        citation = page.get_by_text("notes.md", exact=False).filter(has_text="[").first
        expect(citation).to_be_visible()
        assistant = page.get_by_test_id("stChatMessage").nth(1)
        expect(assistant).to_be_visible()
        page.screenshot(path=shots / "3-answer.png", full_page=True)
        citation.click()
        expect(page.get_by_text("Rotate the API key every 90 days").first).to_be_visible()
        page.screenshot(path=shots / "4-citation-open.png", full_page=True)
        browser.close()
    print(f"screenshots: {shots}")
    assert sorted(f.name for f in shots.iterdir()) == [
        "1-empty-chat.png",
        "2-ingested.png",
        "3-answer.png",
        "4-citation-open.png",
    ]


def listen_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (Linux /proc/net/tcp*), as hex."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


def test_stand_alone_app_is_loopback_only_and_refuses_a_forged_host(stack: dict[str, Proc]) -> None:
    port = int(stack["ui"].url.rsplit(":", 1)[1])
    assert listen_addresses(port) == {"0100007F"}  # 127.0.0.1 only, from .streamlit/config.toml
    here = f"127.0.0.1:{port}"
    assert websocket_status(port, here, f"http://{here}").endswith(" 101 Switching Protocols")
    forged = f"rebind.attacker.example:{port}"
    assert websocket_status(port, forged, f"http://{forged}").endswith(" 403 Forbidden")


def test_no_outside_request_and_an_agent_run_outlives_its_download(
    stack: dict[str, Proc], tmp_path: Path
) -> None:
    from urllib.parse import urlparse

    hosts: set[str] = set()
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.on("request", lambda r: hosts.add(urlparse(r.url).hostname or "") if "://" in r.url else None)
        page.set_default_timeout(180_000)
        expect = playwright_api.expect
        expect.set_options(timeout=180_000)
        page.goto(stack["ui"].url)
        expect(page.get_by_role("link", name="Agents", exact=True)).to_be_visible()
        page.wait_for_load_state("networkidle")

        page.get_by_role("link", name="Agents", exact=True).click()
        page.get_by_text("A tool call on the first step, then the model decides").click()
        page.get_by_role("button", name="Run", exact=True).click()
        download = page.get_by_role("button", name="Download trace (JSON)")
        expect(download).to_be_visible()
        expect(page.get_by_text("Final answer")).to_be_visible()
        with page.expect_download() as got:
            download.click()
        trace = json.loads(Path(got.value.path()).read_text())
        assert trace and trace[-1]["type"] == "final"
        page.wait_for_timeout(2000)  # a rerun, had the click caused one, would have cleared the run by now
        expect(page.get_by_text("Final answer")).to_be_visible()
        expect(page.get_by_text("Tool call").first).to_be_visible()
        page.screenshot(path=tmp_path / "agent-after-download.png", full_page=True)

        page.get_by_role("link", name="Playground", exact=True).click()
        page.get_by_role("button", name="Run", exact=True).click()
        code = page.get_by_test_id("stCode").first
        expect(code).to_be_visible()
        styles = code.locator("pre, code").evaluate_all("els => els.map(e => getComputedStyle(e).whiteSpace)")
        assert any(w in ("pre-wrap", "break-spaces") for w in styles), styles  # lines wrap
        page.get_by_role("link", name="Runtime", exact=True).click()
        expect(page.get_by_text("Tokens/s (last 10 s)")).to_be_visible()
        page.wait_for_load_state("networkidle")
        browser.close()
    assert hosts == {"127.0.0.1"}, f"the page contacted {hosts - {'127.0.0.1'}}"
