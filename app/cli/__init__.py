"""The `jamba-stack` command line: one Typer app; each module of this package adds its commands.

model.py      model make-tiny, generate, chat, demo
serve.py      serve (the OpenAI-compatible API server)
retrieval.py  ingest, search, ask
raft.py       raft generate / eval / train
up.py         up (the API server and the web app, supervised), ui (the web app alone)
"""

from __future__ import annotations

import sys

import typer

from jamba_runtime.errors import JambaStackError
from jamba_stack.app.logs import quiet_library_logs

app = typer.Typer(
    help="jamba-stack: a local Jamba runtime with RAG and agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold [env: ...] and [n]: plain text, not markup
)


def main() -> None:
    """Console entry point: typed errors print one clear line, no traceback, and exit 2 (a
    problem the user can fix) or 1 (a failure of ours, such as the engine loop dying)."""
    quiet_library_logs()
    try:
        app()
    except JambaStackError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1 if e.http_status >= 500 else 2)


def _register() -> None:
    from jamba_stack.app.cli import model, raft, retrieval, serve, up

    app.add_typer(model.model_app, name="model")
    for command in (model.generate, model.chat, model.demo, serve.serve):
        app.command(help=command.__doc__)(command)
    app.command("ingest", help=retrieval.ingest_cmd.__doc__)(retrieval.ingest_cmd)
    app.command("search", help=retrieval.search_cmd.__doc__)(retrieval.search_cmd)
    app.command("ask", help=retrieval.ask_cmd.__doc__)(retrieval.ask_cmd)
    app.add_typer(raft.raft_app, name="raft")
    app.command("up", help=up.up_cmd.__doc__)(up.up_cmd)
    app.command("ui", help=up.ui_cmd.__doc__)(up.ui_cmd)


_register()
