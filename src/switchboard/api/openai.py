"""The OpenAI-compatible surface: /v1/chat/completions, /v1/embeddings, /v1/models.

These are the hot routes, so they are plain ASGI handlers (no framework layers per request).
Each handler authenticates, checks the body, hands it to the gateway pipeline, and renders the
result or the error in OpenAI's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import Receive, Scope, Send

from switchboard.api.asgi import header, read_json, send_json
from switchboard.api.errors import error_body, error_headers
from switchboard.api.openai_checks import check_chat, check_embeddings
from switchboard.api.streaming import StreamResponse
from switchboard.auth.bearer import bearer_token
from switchboard.auth.keys import Caller
from switchboard.errors import InvalidRequest, NotFound, SwitchboardError
from switchboard.gateway.pipeline import route_headers
from switchboard.providers.base import JSON
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.api")
_V1 = "/v1"


def _sse(batch: list[JSON]) -> bytes:
    return b"".join([b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in batch])


def _sse_error(exc: SwitchboardError) -> bytes:
    return b"data: " + orjson.dumps(error_body(_V1, exc)) + b"\n\n"


async def _caller(rt: Runtime, scope: Scope) -> Caller:
    token = bearer_token(header(scope, b"authorization"))
    return await rt.keys.authenticate(token, header(scope, b"x-tenant-id"))


async def chat_completions(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    gateway = rt.gateway
    with gateway.metered(caller, "chat.completions") as event:
        body = await read_json(scope, receive, rt.settings.max_body_bytes)
        check_chat(body)
        if isinstance(body.get("user"), str):
            event.user_id = body["user"]
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            stream = await gateway.stream_chat(
                caller,
                event,
                body,
                include_usage=include_usage,
                cache_control=header(scope, b"cache-control"),
            )
            response = StreamResponse(
                stream,
                media_type="text/event-stream",
                encode=_sse,
                encode_error=_sse_error,
                trailer=b"data: [DONE]\n\n",
                headers=route_headers(event),
            )
            await response(scope, receive, send)
            return
        raw = await gateway.chat_json(
            caller, event, body, cache_control=header(scope, b"cache-control")
        )
        await send_json(send, 200, raw, route_headers(event))


async def embeddings(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    with rt.gateway.metered(caller, "embeddings") as event:
        body = await read_json(scope, receive, rt.settings.max_body_bytes)
        check_embeddings(body)
        if isinstance(body.get("user"), str):
            event.user_id = body["user"]
        result = await rt.gateway.embed(
            caller, event, body, cache_control=header(scope, b"cache-control")
        )
        await send_json(send, 200, orjson.dumps(result), route_headers(event))


def _model_object(name: str) -> JSON:
    return {"id": name, "object": "model", "created": 0, "owned_by": "switchboard"}


async def list_models(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    names = rt.gateway.visible_models(caller)
    await send_json(
        send, 200, orjson.dumps({"object": "list", "data": [_model_object(n) for n in names]})
    )


async def get_model(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    name = scope["path"].removeprefix("/v1/models/")
    if name not in rt.gateway.visible_models(caller):
        raise NotFound(f"the model {name!r} does not exist", param="model", code="model_not_found")
    await send_json(send, 200, orjson.dumps(_model_object(name)))


Handler = Callable[[Runtime, Scope, Receive, Send], Awaitable[None]]
_ROUTES: dict[str, tuple[str, Handler]] = {
    "/v1/chat/completions": ("POST", chat_completions),
    "/v1/embeddings": ("POST", embeddings),
    "/v1/models": ("GET", list_models),
}


def _route(scope: Scope) -> Handler:
    path = scope["path"]
    route = _ROUTES.get(path)
    if route is None and path.startswith("/v1/models/"):
        route = ("GET", get_model)
    if route is None:
        raise NotFound(f"no route {path}", code="not_found")
    method, handler = route
    if scope["method"] != method:
        error = InvalidRequest(f"{path} takes {method}", code="method_not_allowed")
        error.status_code = 405
        raise error
    return handler


class OpenAISurface:
    """The ASGI app for every /v1 path; ``runtime`` is read once the lifespan has built it."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        try:
            await _route(scope)(self._runtime(), scope, receive, send)
        except SwitchboardError as exc:
            await send_json(
                send, exc.status_code, orjson.dumps(error_body(path, exc)), error_headers(exc)
            )
        except Exception:
            log.exception("unhandled error on %s", path)
            internal = SwitchboardError("internal error", code="internal_error")
            await send_json(send, 500, orjson.dumps(error_body(path, internal)))
