"""Small helpers for the Starlette routes (admin, probes): JSON bodies in, JSON out."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api import asgi
from switchboard.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_json(request: Request, limit: int) -> Any:
    """The parsed body, read the same bounded way as on the hot routes."""
    return await asgi.read_json(request.scope, request.receive, limit)


def validated(model: type[M], data: Any, what: str | None = None) -> M:
    """``data`` as ``model``, or a 400 naming the first bad field (``param``) and why."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        prefix = (f"invalid {what}: " if what else "") + (f"{param}: " if param else "")
        raise InvalidRequest(prefix + first["msg"], param=param) from None
