"""The one place errors become responses, in the shape of the protocol the caller speaks.

``/api/...`` (Ollama's API) gets ``{"error": "..."}``; ``/v1/messages`` (Anthropic's API) gets
``{"type": "error", "error": {"type", "message"}}``; everything else gets OpenAI's error
object ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api.http import JSONResponse
from switchboard.errors import RateLimited, SwitchboardError

log = logging.getLogger("switchboard.api")


ANTHROPIC_MESSAGES = "/v1/messages"
# Anthropic's error types by HTTP status (its API documents one type per status).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(exc: SwitchboardError) -> str:
    status = exc.status_code
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _ANTHROPIC_TYPES.get(status, default)


def error_body(path: str, exc: SwitchboardError) -> dict[str, object]:
    if path.startswith("/api/"):
        return {"error": exc.message}
    if path == ANTHROPIC_MESSAGES:
        return {
            "type": "error",
            "error": {"type": anthropic_error_type(exc), "message": exc.message},
        }
    return {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": exc.param,
            "code": exc.code,
        }
    }


def error_headers(exc: SwitchboardError) -> list[tuple[bytes, bytes]]:
    out = list(exc.headers) if isinstance(exc, RateLimited) else []
    if exc.retry_after is not None:
        out.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    return out


def error_response(path: str, exc: SwitchboardError) -> Response:
    headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
    return JSONResponse(error_body(path, exc), status_code=exc.status_code, headers=headers)


async def on_switchboard_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SwitchboardError)
    return error_response(request.url.path, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = SwitchboardError(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    error.status_code = exc.status_code
    error.error_type = "invalid_request_error"
    return error_response(request.url.path, error)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(
        request.url.path, SwitchboardError("internal error", code="internal_error")
    )


EXCEPTION_HANDLERS = {
    SwitchboardError: on_switchboard_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
