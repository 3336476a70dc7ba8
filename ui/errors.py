"""Typed errors a person can hit in the web app. Pages catch `JambaStackError` and show its message
with `st.error`; no traceback reaches the page."""

from __future__ import annotations

from jamba_runtime.errors import JambaStackError


class UIError(JambaStackError):
    """Base of the web app's own errors."""

    http_status = 400
    code = "ui_error"


class UploadTooLargeError(UIError):
    """An uploaded file is over the size limit."""

    http_status = 413
    code = "upload_too_large"


class UnsupportedFileTypeError(UIError):
    """An uploaded file's type cannot be ingested."""

    code = "unsupported_file_type"


class EmptyPromptError(UIError):
    """A playground prompt with no text."""

    code = "empty_prompt"


class InvalidJSONInputError(UIError):
    """A schema or tool definition typed into the playground that is not valid JSON."""

    code = "invalid_json"


class ServerUnavailableError(UIError):
    """The API server configured for the app does not answer."""

    http_status = 503
    code = "server_unavailable"
