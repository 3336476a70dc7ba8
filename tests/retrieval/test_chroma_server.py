"""Server mode: the same pipeline against a real Chroma server (`chroma run`) on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.errors import StoreUnavailableError
from jamba_stack.retrieval.ingest import ingest
from jamba_stack.retrieval.search import open_retriever
from jamba_stack.retrieval.store import Store


def chroma_exe() -> str | None:
    local = Path(sys.executable).parent / "chroma"
    return str(local) if local.exists() else shutil.which("chroma")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path: Path):  # noqa: ANN201 - URL
    exe = chroma_exe()
    if exe is None:
        pytest.skip("the `chroma` CLI is not installed (pip install chromadb): cannot start a Chroma server")
    port = free_port()
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen(
        [exe, "run", "--path", str(tmp_path / "server-db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"chroma server did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_ingest_and_search_through_a_chroma_server(
    tmp_path: Path, embedder: Embedder, chroma_server: str
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.md").write_text("# Cells\n\nMitochondria make ATP.\n\n## Blood\n\nHemoglobin carries oxygen.")
    (docs / "b.txt").write_text("Insulin lowers blood glucose.")
    r = ingest(docs, "srv", data_dir=data, chroma_url=chroma_server, embedder=embedder)
    assert r.chunks_total == r.bm25_total == 3
    again = ingest(docs, "srv", data_dir=data, chroma_url=chroma_server, embedder=embedder)
    assert again.chunks_added == 0 and again.chunks_total == 3
    assert not (data / "chroma").exists()  # nothing in the embedded store
    hits = open_retriever("srv", data_dir=data, chroma_url=chroma_server, embedder=embedder).search(
        "who carries oxygen", 2
    )
    assert (
        hits[0].text.endswith("Hemoglobin carries oxygen.") and hits[0].metadata["heading"] == "Cells > Blood"
    )
    store = Store(data, chroma_server)
    col = store.open("srv")
    assert col.embedder_name == embedder.name and "srv" in store.list_collections()
    # On a server the texts stay in Chroma, where its other clients read them.
    assert col.texts is None and all(col.chroma.get(include=["documents"])["documents"])


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="chroma run"):
        Store(tmp_path, f"http://127.0.0.1:{free_port()}").open("x-missing")
