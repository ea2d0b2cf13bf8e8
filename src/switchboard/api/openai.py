"""The OpenAI-compatible surface: /v1/chat/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.context import runtime, tenant_caller
from switchboard.api.errors import error_body
from switchboard.api.http import JSONResponse, read_json
from switchboard.api.openai_checks import check_chat, check_embeddings
from switchboard.api.streaming import StreamResponse
from switchboard.errors import NotFound, SwitchboardError
from switchboard.providers.base import JSON


def _sse(batch: list[JSON]) -> bytes:
    return b"".join([b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in batch])


def _sse_error(exc: SwitchboardError) -> bytes:
    return b"data: " + orjson.dumps(error_body("/v1", exc)) + b"\n\n"


async def chat_completions(request: Request) -> Response:
    rt = runtime(request)
    caller = await tenant_caller(request, rt)
    gateway = rt.gateway
    with gateway.metered(caller, "chat.completions") as event:
        body = await read_json(request, rt.settings.max_body_bytes)
        check_chat(body)
        if isinstance(body.get("user"), str):
            event.user_id = body["user"]
        headers = {"x-request-id": event.request_id}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            stream = await gateway.stream_chat(caller, event, body, include_usage=include_usage)
            headers["x-switchboard-provider"] = event.provider or ""
            return StreamResponse(
                stream,
                media_type="text/event-stream",
                encode=_sse,
                encode_error=_sse_error,
                trailer=b"data: [DONE]\n\n",
                headers=headers,
            )
        result = await gateway.chat(caller, event, body)
        headers["x-switchboard-provider"] = event.provider or ""
        return JSONResponse(result, headers=headers)


async def embeddings(request: Request) -> Response:
    rt = runtime(request)
    caller = await tenant_caller(request, rt)
    with rt.gateway.metered(caller, "embeddings") as event:
        body = await read_json(request, rt.settings.max_body_bytes)
        check_embeddings(body)
        if isinstance(body.get("user"), str):
            event.user_id = body["user"]
        result = await rt.gateway.embed(caller, event, body)
        return JSONResponse(
            result,
            headers={
                "x-request-id": event.request_id,
                "x-switchboard-provider": event.provider or "",
            },
        )


def _model_object(name: str) -> JSON:
    return {"id": name, "object": "model", "created": 0, "owned_by": "switchboard"}


async def list_models(request: Request) -> Response:
    rt = runtime(request)
    caller = await tenant_caller(request, rt)
    names = rt.gateway.catalog.visible(caller.tenant.usage_mode)
    return JSONResponse({"object": "list", "data": [_model_object(n) for n in names]})


async def get_model(request: Request) -> Response:
    rt = runtime(request)
    caller = await tenant_caller(request, rt)
    name = request.path_params["model"]
    if name not in rt.gateway.catalog.visible(caller.tenant.usage_mode):
        raise NotFound(f"the model {name!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_object(name))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
