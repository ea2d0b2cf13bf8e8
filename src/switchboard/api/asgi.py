"""Raw ASGI helpers for the hot routes, which skip the framework's per-request layers.

The OpenAI surface is served straight from ASGI: these helpers read headers and a bounded
body, and send a complete JSON response. Everything else (admin, probes) uses Starlette.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from switchboard.errors import InvalidRequest, PayloadTooLarge

_JSON = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` in lowercase bytes), decoded, or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_json(scope: Scope, receive: Receive, limit: int) -> Any:
    """The parsed JSON body; 413 past ``limit`` bytes (checked before and while reading)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise InvalidRequest("the client went away while sending the body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        more = message.get("more_body", False)
    if not body:
        raise InvalidRequest("request body is empty: expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc


async def send_json(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    raw = [_JSON, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
