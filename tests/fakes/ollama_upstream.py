"""Fake Ollama API: ``/api/chat`` (JSON + NDJSON), ``/api/embed``, ``/api/tags``, ``/api/show``.

See :mod:`fakes.behaviour` for the trigger models; additionally model
``missing`` answers 404 like an unpulled model.  Every request is appended to
``app.state.requests`` as a :class:`fakes.behaviour.RecordedRequest`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .behaviour import (
    Reply,
    build_reply,
    embedding_dims,
    embedding_vector,
    error_message,
    parse_trigger,
    pause,
    record_request,
)
from .responses import AbortableStreamingResponse, json_response, paced_stream, retry_headers

VERSION = "0.6.0"
MISSING_MODEL = "missing"
_MODIFIED_AT = "2025-01-01T00:00:00.000000Z"
_LOAD_NS = 1_000_000
_PROMPT_TOKEN_NS = 500_000
_EVAL_TOKEN_NS = 2_000_000

_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "3.2B",
    "quantization_level": "Q4_K_M",
}
MODELS: list[dict[str, Any]] = [
    {
        "name": name,
        "model": name,
        "modified_at": _MODIFIED_AT,
        "size": size,
        "digest": digest,
        "details": _DETAILS,
    }
    for name, size, digest in (
        ("llama3.2:latest", 2_019_393_189, "a80c4f17acd5" + "0" * 52),
        ("qwen2.5:7b", 4_683_087_332, "845dbda0ea48" + "0" * 52),
        ("nomic-embed-text:latest", 274_302_450, "0a109f422b47" + "0" * 52),
    )
]


def ollama_error(status: int, message: str | None = None) -> Response:
    """``{"error": "<message>"}`` with the given status."""
    return json_response({"error": message or error_message(status)}, status, retry_headers(status))


def _model_not_found(model: str) -> Response:
    return ollama_error(404, f'model "{model}" not found, try pulling it first')


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _timings(prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
    prompt_ns = prompt_tokens * _PROMPT_TOKEN_NS
    eval_ns = eval_tokens * _EVAL_TOKEN_NS
    return {
        "total_duration": _LOAD_NS + prompt_ns + eval_ns,
        "load_duration": _LOAD_NS,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_tokens,
        "eval_duration": eval_ns,
    }


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    call = reply.tool_call
    return [] if call is None else [{"function": {"name": call.name, "arguments": call.arguments}}]


def _line(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload) + b"\n"


def create_app() -> Starlette:
    """Fake Ollama upstream (no auth)."""

    async def root(request: Request) -> Response:
        await record_request(request)
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        await record_request(request)
        return json_response({"version": VERSION})

    async def tags(request: Request) -> Response:
        await record_request(request)
        return json_response({"models": MODELS})

    async def show(request: Request) -> Response:
        body = (await record_request(request)).body
        model = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not isinstance(model, str):
            return ollama_error(400, "model is required")
        if model == MISSING_MODEL:
            return _model_not_found(model)
        return json_response(
            {
                "modelfile": f"FROM {model}\n",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "license": "fake",
                "details": _DETAILS,
                "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
                "capabilities": ["completion", "tools"],
                "modified_at": _MODIFIED_AT,
            }
        )

    async def chat(request: Request) -> Response:
        body = (await record_request(request)).body
        if not isinstance(body, dict):
            return ollama_error(400, "invalid JSON body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return ollama_error(400, "model is required")
        if model == MISSING_MODEL:
            return _model_not_found(model)
        trigger = parse_trigger(model)
        if trigger.error_status is not None:
            return ollama_error(trigger.error_status)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            empty = {"role": "assistant", "content": ""}
            return json_response(
                {
                    "model": model,
                    "created_at": _now(),
                    "message": empty,
                    "done_reason": "load",
                    "done": True,
                }
            )

        reply = build_reply(messages, body.get("tools"))
        final = {
            "done": True,
            "done_reason": "stop",
            **_timings(reply.prompt_tokens, reply.completion_tokens),
        }
        if body.get("stream") is False:
            await pause(trigger.response_delay, request)
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if reply.tool_call is not None:
                message["tool_calls"] = _tool_calls(reply)
            return json_response(
                {"model": model, "created_at": _now(), "message": message, **final}
            )

        def line(message: dict[str, Any], **extra: Any) -> bytes:
            return _line({"model": model, "created_at": _now(), "message": message, **extra})

        if reply.tool_call is None:
            content = [
                line({"role": "assistant", "content": piece}, done=False) for piece in reply.pieces
            ]
        else:
            content = [
                line(
                    {"role": "assistant", "content": "", "tool_calls": _tool_calls(reply)},
                    done=False,
                )
            ]
        tail = [line({"role": "assistant", "content": ""}, **final)]
        return AbortableStreamingResponse(
            paced_stream([], content, tail, trigger, request), media_type="application/x-ndjson"
        )

    async def embed(request: Request) -> Response:
        body = (await record_request(request)).body
        if not isinstance(body, dict):
            return ollama_error(400, "invalid JSON body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return ollama_error(400, "model is required")
        if model == MISSING_MODEL:
            return _model_not_found(model)
        raw_input = body.get("input")
        texts = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            return ollama_error(400, "invalid input type")
        trigger = parse_trigger(model)
        if trigger.error_status is not None:
            return ollama_error(trigger.error_status)
        await pause(trigger.response_delay, request)

        dims = embedding_dims(body.get("dimensions"))
        vectors = [embedding_vector(text, dims) for text in texts]
        tokens = sum(max(1, len(text.split())) for text in texts)
        return json_response(
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": _LOAD_NS + tokens * _PROMPT_TOKEN_NS,
                "load_duration": _LOAD_NS,
                "prompt_eval_count": tokens,
            }
        )

    app = Starlette(
        routes=[
            Route("/", root, methods=["GET"]),
            Route("/api/version", version, methods=["GET"]),
            Route("/api/tags", tags, methods=["GET"]),
            Route("/api/show", show, methods=["POST"]),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/embed", embed, methods=["POST"]),
        ]
    )
    app.state.requests = []
    app.state.disconnects = 0
    return app
