"""Small helpers for the Starlette routes (admin, probes): JSON bodies in, JSON out."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api import asgi


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_json(request: Request, limit: int) -> Any:
    """The parsed body, read the same bounded way as on the hot routes."""
    return await asgi.read_json(request.scope, request.receive, limit)
