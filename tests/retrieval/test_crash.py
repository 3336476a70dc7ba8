"""Kill an ingest with SIGKILL midway, run it again: the collection ends exactly as an
uninterrupted run would leave it, BM25 agrees with Chroma, and nothing written before the kill
is embedded again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from jamba_stack.retrieval.bm25 import BM25Index
from jamba_stack.retrieval.chunking import Chunker
from jamba_stack.retrieval.embeddings import Embedder
from jamba_stack.retrieval.ingest import bm25_dir, dirty_mark, ingest
from jamba_stack.retrieval.loaders import load_path
from jamba_stack.retrieval.store import Store

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder
    from jamba_stack.retrieval.ingest import ingest

    def wrote(n):
        print("wrote", n, flush=True)

    ingest(sys.argv[1], "crash", data_dir=sys.argv[2], embedder=SentenceTransformerEmbedder(),
           embed_slice=8, on_write=wrote)
    print("finished", flush=True)
    """
)


class Counting(Embedder):
    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dim, self.backend = inner, inner.name, inner.dim, inner.backend
        self.max_tokens, self.special_tokens = inner.max_tokens, inner.special_tokens
        self.n = 0

    def token_counter(self):  # noqa: ANN201
        return self.inner.token_counter()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.n += len(texts)
        return self.inner.embed_batch(texts)


def test_sigkill_mid_ingest_then_rerun_is_exact(tmp_path: Path, embedder: Embedder) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    for i in range(10):
        (docs / f"f{i:02d}.md").write_text(
            f"# File {i}\n\n" + " ".join(f"Fact {j} of file {i} concerns protein folding." for j in range(30))
        )
    rows = [{"_id": f"q{i}", "title": f"T{i}", "text": f"Record {i} on enzymes."} for i in range(30)]
    (docs / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, _ = load_path(docs)
    chunker = Chunker(embedder.token_counter(), embedder.chunk_tokens, 32)
    expected = sorted({c.id for cs in chunker.chunk_many(loaded) for c in cs})

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(docs), str(data)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    written = 0
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("wrote"):
                written += int(line.split()[1])
            if written >= 16 or line.startswith("finished") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and written >= 16

    col = Store(data).open("crash")
    half = col.count()
    assert written <= half < len(expected)
    assert dirty_mark(col).exists()  # BM25 is known to be stale

    emb = Counting(embedder)
    report = ingest(docs, "crash", data_dir=data, embedder=emb)
    assert emb.n == len(expected) - half  # only what never reached Chroma
    ids = sorted(col.chroma.get(include=[])["ids"])
    assert ids == expected and report.chunks_total == len(expected)
    idx = BM25Index.load(bm25_dir(col))
    assert idx is not None and sorted(idx.ids) == expected and not dirty_mark(col).exists()
    assert col.texts is not None and sorted(col.texts.ids()) == expected  # no row lost or left over

    again = ingest(docs, "crash", data_dir=data, embedder=emb)
    assert again.chunks_added == 0 and again.files_unchanged == 11 and col.count() == len(expected)
