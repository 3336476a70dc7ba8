"""The OpenAI-compatible HTTP server (FastAPI): `create_app(settings, llm=...)` and `serve(...)`.

`app.py` the app, middleware and routes; `protocol.py` request/response bodies; `chat.py`,
`completions.py`, `models.py` the endpoints; `serving.py` what they share (sampling, streams,
disconnects); `sse.py` event framing; `errors.py` OpenAI error bodies; `metrics.py` Prometheus.
See docs/server.md.
"""

from jamba_stack.app.server.app import create_app, serve

__all__ = ["create_app", "serve"]
