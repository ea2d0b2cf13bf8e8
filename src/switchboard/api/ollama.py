"""The Ollama-compatible surface: ``/`` and ``/api/...``, so Ollama clients and Open WebUI's
"Ollama connection" can use every model Switchboard routes, whatever serves it upstream.

Requests are translated to the gateway's OpenAI chat format (`switchboard.api.ollama_format`)
and answered in Ollama's shapes; errors are always ``{"error": "..."}``. Like the OpenAI
surface, it is plain ASGI, authenticated by a tenant key (``Authorization: Bearer``, with
``X-Tenant-Id`` checked when sent), and meters each request once. ``GET /`` and
``/api/version`` answer without a key: clients probe them before they send any.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import Message, Receive, Scope, Send

from switchboard.api.asgi import header, read_json, send_json
from switchboard.api.errors import error_body, error_headers
from switchboard.api.ollama_format import (
    Shape,
    Timing,
    chat_request,
    chat_response,
    embed_request,
    embed_response,
    embeddings_request,
    embeddings_response,
    generate_request,
    generate_response,
    load_response,
    name_candidates,
    rfc3339,
    tagged,
)
from switchboard.api.ollama_stream import OllamaStreamEncoder, ndjson_error
from switchboard.api.streaming import StreamResponse
from switchboard.auth.bearer import bearer_token
from switchboard.auth.keys import Caller
from switchboard.errors import InvalidRequest, NotFound, SwitchboardError
from switchboard.gateway.pipeline import route_headers
from switchboard.gateway.routing import Deployment
from switchboard.metering.usage import UsageEvent
from switchboard.providers.base import JSON
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.api")

# The Ollama API level this surface implements (/api/chat with tools, images and structured
# outputs, /api/embed): clients that gate features on the server version see one recent
# enough for all of them. It names the API, not an Ollama build.
OLLAMA_VERSION = "0.6.0"
_RUNNING = b"Ollama is running"
_ERRORS = "/api/"  # error_body renders Ollama's {"error": "..."} for this prefix
# Open WebUI forwards who its user is (ENABLE_FORWARD_USER_INFO_HEADERS).
_USER_HEADER = b"x-openwebui-user-id"
_MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/delete", "/api/copy", "/api/blobs/")
# A catalog model is not a local weights file: no size, no quantization. `modified_at` is
# when this gateway process started serving its catalog.
_MODIFIED_AT = rfc3339(time.time_ns())
_CAPABILITIES = ["completion", "tools"]


def _cache_control(scope: Scope) -> str | None:
    return header(scope, b"cache-control")


async def _caller(rt: Runtime, scope: Scope) -> Caller:
    token = bearer_token(header(scope, b"authorization"))
    return await rt.keys.authenticate(token, header(scope, b"x-tenant-id"))


def _user(scope: Scope, event: UsageEvent) -> None:
    user = header(scope, _USER_HEADER)
    if user:
        event.user_id = user


def _catalog_name(rt: Runtime, event: UsageEvent, requested: str) -> str:
    """The catalog's name for ``requested`` (``x`` and ``x:latest`` are one model)."""
    for candidate in name_candidates(requested):
        if rt.gateway.catalog.deployments(candidate):
            return candidate
    event.model = requested
    raise NotFound(f"model {requested!r} not found", param="model", code="model_not_found")


def _check_access(rt: Runtime, caller: Caller, event: UsageEvent, model: str) -> None:
    """For requests that reach no upstream: 403 when the tenant may not use ``model``."""
    event.model = model
    rt.gateway.catalog.route(model, caller.tenant.usage_mode)


async def _reply(send: Send, body: JSON, event: UsageEvent) -> None:
    await send_json(send, 200, orjson.dumps(body), route_headers(event))


# -- generation --------------------------------------------------------------------------------


async def _generate(rt: Runtime, scope: Scope, receive: Receive, send: Send, shape: Shape) -> None:
    caller = await _caller(rt, scope)
    gateway = rt.gateway
    with gateway.metered(caller, f"ollama.{shape}") as event:
        _user(scope, event)
        raw = await read_json(scope, receive, rt.settings.max_body_bytes)
        call = chat_request(raw) if shape == "chat" else generate_request(raw)
        model = _catalog_name(rt, event, call.model)
        if call.body is None:  # nothing to generate: Ollama only (un)loads the model
            _check_access(rt, caller, event, model)
            await _reply(send, load_response(call.model, shape, call.load_reason), event)
            return
        body = {**call.body, "model": model}
        if call.stream:
            stream = await gateway.stream_chat(
                caller, event, body, include_usage=True, cache_control=_cache_control(scope)
            )
            response = StreamResponse(
                stream,
                media_type="application/x-ndjson",
                encode=OllamaStreamEncoder(call.model, shape=shape, started=event.started),
                encode_error=ndjson_error,
                headers=route_headers(event),
            )
            await response(scope, receive, send)
            return
        result = await gateway.chat(caller, event, body, cache_control=_cache_control(scope))
        timing = Timing.between(event.started, time.perf_counter())
        render = chat_response if shape == "chat" else generate_response
        await _reply(send, render(result, call.model, timing), event)


async def chat(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _generate(rt, scope, receive, send, "chat")


async def generate(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _generate(rt, scope, receive, send, "generate")


async def embed(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    with rt.gateway.metered(caller, "ollama.embed") as event:
        _user(scope, event)
        call = embed_request(await read_json(scope, receive, rt.settings.max_body_bytes))
        assert call.body is not None
        body = {**call.body, "model": _catalog_name(rt, event, call.model)}
        result = await rt.gateway.embed(caller, event, body)
        timing = Timing.between(event.started, time.perf_counter())
        await _reply(send, embed_response(result, call.model, timing), event)


async def embeddings(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """The legacy one-prompt endpoint, metered as ``ollama.embed`` too."""
    caller = await _caller(rt, scope)
    with rt.gateway.metered(caller, "ollama.embed") as event:
        _user(scope, event)
        call = embeddings_request(await read_json(scope, receive, rt.settings.max_body_bytes))
        model = _catalog_name(rt, event, call.model)
        if call.body is None:
            _check_access(rt, caller, event, model)
            await _reply(send, embeddings_response(None), event)
            return
        result = await rt.gateway.embed(caller, event, {**call.body, "model": model})
        await _reply(send, embeddings_response(result), event)


# -- models ------------------------------------------------------------------------------------


def _details(deployment: Deployment) -> JSON:
    family = deployment.provider.name
    return {
        "parent_model": "",
        "format": "switchboard",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    }


def _listed(name: str, deployment: Deployment) -> JSON:
    route = f"{name}\n{deployment.provider.name}\n{deployment.upstream_model}"
    return {
        "name": tagged(name),
        "model": tagged(name),
        "modified_at": _MODIFIED_AT,
        "size": 0,
        "digest": hashlib.sha256(route.encode()).hexdigest(),
        "details": _details(deployment),
    }


async def tags(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """The caller's visible models; the family is the provider that serves each."""
    caller = await _caller(rt, scope)
    catalog, mode = rt.gateway.catalog, caller.tenant.usage_mode
    visible = rt.gateway.visible_models(caller)
    models = [_listed(name, catalog.resolve(name, mode)) for name in visible]
    await send_json(send, 200, orjson.dumps({"models": models}))


async def show(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    body = await read_json(scope, receive, rt.settings.max_body_bytes)
    requested = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
    if not isinstance(requested, str) or not requested:
        raise InvalidRequest("model is required", param="model")
    catalog, mode = rt.gateway.catalog, caller.tenant.usage_mode
    visible = rt.gateway.visible_models(caller)
    name = next((c for c in name_candidates(requested) if c in visible), None)
    if name is None:
        raise NotFound(f"model {requested!r} not found", param="model", code="model_not_found")
    deployment = catalog.resolve(name, mode)
    shown = {
        "modelfile": f"# Served by Switchboard via provider {deployment.provider.name}\n"
        f"FROM {tagged(name)}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": _details(deployment),
        "model_info": {"general.architecture": "switchboard", "general.name": name},
        "capabilities": _CAPABILITIES,
        "modified_at": _MODIFIED_AT,
    }
    await send_json(send, 200, orjson.dumps(shown))


async def ps(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """Nothing is ever loaded in the gateway itself."""
    await _caller(rt, scope)
    await send_json(send, 200, orjson.dumps({"models": []}))


async def version(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, orjson.dumps({"version": OLLAMA_VERSION}))


async def root(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_RUNNING)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _RUNNING})


# -- routing -----------------------------------------------------------------------------------

Handler = Callable[[Runtime, Scope, Receive, Send], Awaitable[None]]
_ROUTES: dict[str, tuple[str, Handler]] = {
    "/": ("GET", root),
    "/api/version": ("GET", version),
    "/api/tags": ("GET", tags),
    "/api/ps": ("GET", ps),
    "/api/show": ("POST", show),
    "/api/chat": ("POST", chat),
    "/api/generate": ("POST", generate),
    "/api/embed": ("POST", embed),
    "/api/embeddings": ("POST", embeddings),
}


def _route(scope: Scope) -> Handler:
    path, method = scope["path"], scope["method"]
    route = _ROUTES.get(path)
    if route is None:
        if path.startswith(_MANAGEMENT):
            error = SwitchboardError(
                f"{path} is not supported: Switchboard serves the models its operator "
                "configured, which are managed in the gateway's configuration",
                code="not_implemented",
            )
            error.status_code = 501
            raise error
        raise NotFound(f"no route {path}", code="not_found")
    expected, handler = route
    if method != expected and not (method == "HEAD" and expected == "GET"):
        error = InvalidRequest(f"{path} takes {expected}", code="method_not_allowed")
        error.status_code = 405
        raise error
    return handler


def _headless(send: Send) -> Send:
    """For HEAD: the GET response's status and headers, without its body."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return send_head


class OllamaSurface:
    """The ASGI app for ``/`` and every ``/api`` path; ``runtime`` is read once the lifespan
    has built it."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            send = _headless(send)
        try:
            await _route(scope)(self._runtime(), scope, receive, send)
        except SwitchboardError as exc:
            await send_json(
                send, exc.status_code, orjson.dumps(error_body(_ERRORS, exc)), error_headers(exc)
            )
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            internal = SwitchboardError("internal error", code="internal_error")
            await send_json(send, 500, orjson.dumps(error_body(_ERRORS, internal)))
