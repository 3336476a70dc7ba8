"""Library log lines that must not reach a user's terminal or the web app's log.

bm25s sets its own logger to DEBUG when imported, so one `logging.basicConfig()` anywhere (a
library, a notebook) makes every index build print `DEBUG:bm25s:...`; pypdf logs each quirk of a
malformed PDF as a warning, which ingest already reports as a skipped file with its reason.
"""

from __future__ import annotations

import logging


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_library_logs() -> None:
    """Keep bm25s to warnings and pypdf to errors. Call once at an entry point, before or after
    the libraries are imported (a filter, unlike a level, survives bm25s's `setLevel(DEBUG)`)."""
    bm25s = logging.getLogger("bm25s")
    if _warnings_and_above not in bm25s.filters:
        bm25s.addFilter(_warnings_and_above)
    logging.getLogger("pypdf").setLevel(logging.ERROR)
