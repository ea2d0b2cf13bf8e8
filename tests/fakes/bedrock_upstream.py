"""Fake Amazon Bedrock: ``POST /model/{modelId}/converse``, ``/converse-stream`` (binary AWS
event stream), ``/invoke`` (Amazon Titan Text Embeddings), and the control plane's
``GET /foundation-models``.

Every request must be signed with SigV4 for the fake's credentials, region and the service
``bedrock``: the fake rebuilds the canonical request from what it received (raw path, signed
headers, body) and recomputes the signature with botocore. An unknown access key is
``403 UnrecognizedClientException``, a wrong signature (wrong secret, tampered body or path)
or a stale ``X-Amz-Date`` ``403 InvalidSignatureException``. A session token
(``X-Amz-Security-Token``) is signed like any header but not checked against anything.

Converse bodies are checked the way Bedrock checks them (alternating roles starting with the
user, non-blank text, tool blocks need a ``toolConfig``, tool results answer the previous
turn's tool uses, ...) and refused with ``400 ValidationException``. Replies, tokens and
triggers are those of :mod:`fakes.behaviour`, applied to the model id; ``error-<code>``
answers with the Bedrock error type of that status. Model ``throttle-midstream`` streams its
text, then a ``throttlingException`` event. Every request is appended to
``app.state.requests``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import uuid
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .behaviour import (
    Reply,
    build_reply,
    count_words,
    embedding_dims,
    embedding_vector,
    error_message,
    new_id,
    parse_trigger,
    pause,
    record_request,
)
from .responses import AbortableStreamingResponse, json_response, paced_stream

SERVICE = "bedrock"
MIDSTREAM_THROTTLE = "throttle-midstream"
MAX_CLOCK_SKEW = timedelta(minutes=5)
EVENT_STREAM = "application/vnd.amazon.eventstream"
FOUNDATION_MODELS = (
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "amazon.titan-embed-text-v2:0",
)
ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,]+)/(?P<date>\d{8})/(?P<region>[^/,]+)/"
    r"(?P<service>[^/,]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_BLOCKS = {"text", "image", "document", "toolUse", "toolResult", "reasoningContent", "cachePoint"}
_TOP_LEVEL = {
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
}
_INFERENCE = {"maxTokens", "temperature", "topP", "stopSequences"}


# --- wire helpers -------------------------------------------------------------------------


def bedrock_error(status: int, message: str | None = None, kind: str | None = None) -> Response:
    """``{"message"}`` with ``x-amzn-ErrorType``, as Bedrock answers a failed request."""
    kind = kind or ERROR_TYPES.get(status, "InternalServerException")
    headers = {
        "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    return json_response({"message": message or error_message(status)}, status, headers)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length, CRC32), string
    headers, payload, CRC32 of everything before it. botocore only decodes these."""
    raw_headers = b""
    for name, value in headers.items():
        key, data = name.encode(), value.encode()
        raw_headers += struct.pack("!B", len(key)) + key + b"\x07" + struct.pack("!H", len(data))
        raw_headers += data
    prelude = struct.pack("!II", 12 + len(raw_headers) + len(payload) + 4, len(raw_headers))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack("!I", zlib.crc32(message))


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    # Bedrock pads event payloads with a "p" member so their sizes leak less; clients ignore it.
    return encode_message(headers, orjson.dumps({**payload, "p": "abcdefgh"}))


def encode_exception(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": message}))


# --- SigV4 --------------------------------------------------------------------------------


def signature_problem(
    request: Request, body: bytes, access_key: str, secret_key: str, region: str
) -> tuple[str, str] | None:
    """``(error type, message)`` when the request's SigV4 signature does not hold."""
    auth = _AUTHORIZATION.fullmatch(request.headers.get("authorization", ""))
    if auth is None:
        return "MissingAuthenticationTokenException", "Missing Authentication Token"
    if auth["key"] != access_key:
        return (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "IncompleteSignatureException", "X-Amz-Date is missing or malformed."
    if abs(datetime.now(UTC) - signed_at) > MAX_CLOCK_SKEW:
        return "InvalidSignatureException", f"Signature expired: {amz_date} is out of range."
    names = auth["signed"].split(";")
    if (auth["region"], auth["service"]) != (region, SERVICE) or auth["date"] != amz_date[:8]:
        return "InvalidSignatureException", "Credential should be scoped to a valid region."
    if not {"host", "x-amz-date"} <= set(names) or any(n not in request.headers for n in names):
        return "InvalidSignatureException", "Signed headers are missing from the request."
    content_sha = request.headers.get("x-amz-content-sha256")
    if content_sha is not None and content_sha != hashlib.sha256(body).hexdigest():
        return "InvalidSignatureException", "The provided x-amz-content-sha256 does not match."
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"http://{request.headers['host']}{raw_path.decode('latin-1')}"
    signed = AWSRequest(
        method=request.method,
        url=f"{url}?{query}" if query else url,
        data=body,
        headers={n: ",".join(request.headers.getlist(n)) for n in names},
    )
    signed.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret_key), SERVICE, region)
    expected = signer.signature(
        signer.string_to_sign(signed, signer.canonical_request(signed)), signed
    )
    if not hmac.compare_digest(expected, auth["signature"]):
        return (
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return None


# --- Converse -----------------------------------------------------------------------------


def converse_problem(body: Any) -> str | None:
    """What Bedrock would refuse in a Converse body, or None."""
    if not isinstance(body, dict):
        return "Malformed input request, please reformat your input and try again."
    extra = set(body) - _TOP_LEVEL
    if extra:
        return f"extraneous key [{sorted(extra)[0]}] is not permitted"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "A conversation must start with a user message. Try again with a conversation that starts with a user message."
    if not all(
        isinstance(s, dict) and isinstance(s.get("text"), str) for s in body.get("system", [])
    ):
        return "The system field must be a list of text blocks."
    problem = _inference_problem(body.get("inferenceConfig", {})) or _tools_problem(body)
    if problem:
        return problem
    previous_uses: set[str] = set()
    for i, msg in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(msg, dict) or msg.get("role") != expected:
            return (
                "A conversation must alternate between user and assistant roles. Make sure "
                "the conversation alternates between user and assistant roles and try again."
            )
        problem, previous_uses = _content_problem(msg, i, previous_uses, "toolConfig" in body)
        if problem:
            return problem
    return None


def _inference_problem(config: Any) -> str | None:
    if not isinstance(config, dict) or set(config) - _INFERENCE:
        return "inferenceConfig holds unknown fields."
    max_tokens = config.get("maxTokens", 1)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "The maximum tokens you requested must be a positive integer."
    stops = config.get("stopSequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        return "stopSequences must be a list of strings."
    return None


def _tools_problem(body: dict[str, Any]) -> str | None:
    config = body.get("toolConfig")
    if config is None:
        return None
    tools = config.get("tools") if isinstance(config, dict) else None
    if not isinstance(tools, list) or not tools:
        return "The toolConfig field must hold at least one tool."
    for tool in tools:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return "Each tool needs a toolSpec with a name."
        if not isinstance((spec.get("inputSchema") or {}).get("json"), dict):
            return f"The tool {spec['name']} needs an inputSchema.json object."
        if "description" in spec and not spec["description"]:
            return f"The tool {spec['name']} has an empty description."
    choice = config.get("toolChoice", {"auto": {}})
    if (
        not isinstance(choice, dict)
        or len(choice) != 1
        or next(iter(choice)) not in ("auto", "any", "tool")
    ):
        return "toolChoice must be exactly one of auto, any or tool."
    return None


def _content_problem(
    msg: dict[str, Any], index: int, previous_uses: set[str], has_tools: bool
) -> tuple[str | None, set[str]]:
    content = msg.get("content")
    if not isinstance(content, list) or not content:
        return (
            f"The content field in the Message object at messages.{index} is empty. Add a "
            "ContentBlock object to the content field and try again.",
            set(),
        )
    uses: set[str] = set()
    results: set[str] = set()
    for j, block in enumerate(content):
        where = f"messages.{index}.content.{j}"
        if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in _BLOCKS:
            return f"The ContentBlock object at {where} is malformed.", set()
        if "text" in block and (not isinstance(block["text"], str) or not block["text"].strip()):
            return (
                f"The text field in the ContentBlock object at {where} is blank. Add text to the text field, and try again.",
                set(),
            )
        if "image" in block and not _valid_image(block["image"]):
            return f"The image at {where} is not a valid png, jpeg, gif or webp image.", set()
        if ("toolUse" in block or "toolResult" in block) and not has_tools:
            return (
                "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
                set(),
            )
        if "toolUse" in block:
            if msg["role"] != "assistant":
                return f"toolUse at {where} is only allowed in assistant messages.", set()
            uses.add(block["toolUse"].get("toolUseId", ""))
        if "toolResult" in block:
            results.add(block["toolResult"].get("toolUseId", ""))
    if msg["role"] == "user" and results != previous_uses:
        return (
            f"Expected toolResult blocks at messages.{index}.content for the following Ids: "
            f"{', '.join(sorted(previous_uses)) or 'none'}, but found: {', '.join(sorted(results))}",
            set(),
        )
    return None, uses


def _valid_image(image: Any) -> bool:
    if not isinstance(image, dict) or image.get("format") not in ("png", "jpeg", "gif", "webp"):
        return False
    data = (image.get("source") or {}).get("bytes")
    try:
        return isinstance(data, str) and bool(base64.b64decode(data, validate=True))
    except binascii.Error:
        return False


def as_chat(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The conversation and tools in the OpenAI shape :func:`fakes.behaviour.build_reply`
    reads: a user turn of tool results is a ``tool`` message."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": block["text"]} for block in body.get("system", [])
    ]
    for msg in body["messages"]:
        blocks = msg["content"]
        results = [b["toolResult"] for b in blocks if "toolResult" in b]
        for result in results:
            texts = [
                c["text"] if "text" in c else orjson.dumps(c.get("json")).decode()
                for c in result.get("content", [])
            ]
            messages.append({"role": "tool", "content": " ".join(texts)})
        texts = [b["text"] for b in blocks if "text" in b]
        if texts or not results:
            messages.append({"role": msg["role"], "content": " ".join(texts)})
    tools = [
        {"function": {"name": t["toolSpec"]["name"]}}
        for t in (body.get("toolConfig") or {}).get("tools", [])
    ]
    return messages, tools


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "inputTokens": reply.prompt_tokens,
        "outputTokens": reply.completion_tokens,
        "totalTokens": reply.prompt_tokens + reply.completion_tokens,
    }


def converse_response(reply: Reply) -> dict[str, Any]:
    if reply.tool_call is None:
        content: list[dict[str, Any]] = [{"text": reply.text}]
    else:
        use = {"toolUseId": new_id("tooluse_"), "name": reply.tool_call.name}
        content = [{"toolUse": {**use, "input": reply.tool_call.arguments}}]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "end_turn" if reply.tool_call is None else "tool_use",
        "usage": _usage(reply),
        "metrics": {"latencyMs": 42},
    }


def stream_events(reply: Reply, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """``(head, body, tail)`` for :func:`fakes.responses.paced_stream`."""
    head = [encode_event("messageStart", {"role": "assistant"})]
    if reply.tool_call is None:
        body = [
            encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
            for piece in reply.pieces
        ]
        reason = "end_turn"
    else:
        start = {"toolUse": {"toolUseId": new_id("tooluse_"), "name": reply.tool_call.name}}
        arguments = orjson.dumps(reply.tool_call.arguments).decode()
        middle = len(arguments) // 2
        body = [encode_event("contentBlockStart", {"contentBlockIndex": 0, "start": start})] + [
            encode_event(
                "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": part}}}
            )
            for part in (arguments[:middle], arguments[middle:])
        ]
        reason = "tool_use"
    if model == MIDSTREAM_THROTTLE:
        return (
            head,
            body,
            [
                encode_exception(
                    "throttlingException", "Too many tokens, please wait before trying again."
                )
            ],
        )
    tail = [
        encode_event("contentBlockStop", {"contentBlockIndex": 0}),
        encode_event("messageStop", {"stopReason": reason}),
        encode_event("metadata", {"usage": _usage(reply), "metrics": {"latencyMs": 42}}),
    ]
    return head, body, tail


# --- app ----------------------------------------------------------------------------------


def create_app(access_key: str, secret_key: str, region: str) -> Starlette:
    """Fake Bedrock accepting requests SigV4-signed with these credentials for ``region``."""

    async def signed_body(request: Request) -> tuple[Any, Response | None]:
        recorded = await record_request(request)
        problem = signature_problem(request, recorded.raw, access_key, secret_key, region)
        if problem is not None:
            return None, bedrock_error(403, problem[1], problem[0])
        return recorded.body, None

    async def converse(request: Request) -> Response:
        body, denied = await signed_body(request)
        if denied is not None:
            return denied
        model = request.path_params["model_id"]
        trigger = parse_trigger(model)
        if trigger.error_status is not None:
            return bedrock_error(trigger.error_status)
        problem = converse_problem(body)
        if problem is not None:
            return bedrock_error(400, problem)
        reply = build_reply(*as_chat(body))
        if request.url.path.endswith("/converse"):
            await pause(trigger.response_delay, request)
            return json_response(converse_response(reply))
        head, events, tail = stream_events(reply, model)
        return AbortableStreamingResponse(
            paced_stream(head, events, tail, trigger, request), media_type=EVENT_STREAM
        )

    async def invoke(request: Request) -> Response:
        body, denied = await signed_body(request)
        if denied is not None:
            return denied
        model = request.path_params["model_id"]
        trigger = parse_trigger(model)
        if trigger.error_status is not None:
            return bedrock_error(trigger.error_status)
        if "titan-embed-text" not in model:
            return bedrock_error(400, f"The fake serves Titan text embeddings only, not {model}.")
        text = body.get("inputText") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return bedrock_error(400, "Malformed input request: inputText is required.")
        await pause(trigger.response_delay, request)
        vector = embedding_vector(text, embedding_dims(body.get("dimensions")))
        return json_response(
            {
                "embedding": vector,
                "embeddingsByType": {"float": vector},
                "inputTextTokenCount": max(1, count_words(text)),
            }
        )

    async def foundation_models(request: Request) -> Response:
        _, denied = await signed_body(request)
        if denied is not None:
            return denied
        summaries = [
            {
                "modelArn": f"arn:aws:bedrock:{region}::foundation-model/{model}",
                "modelId": model,
                "providerName": model.split(".", 1)[0].title(),
                "responseStreamingSupported": "embed" not in model,
                "modelLifecycle": {"status": "ACTIVE"},
            }
            for model in FOUNDATION_MODELS
        ]
        return json_response({"modelSummaries": summaries})

    app = Starlette(
        routes=[
            Route("/model/{model_id:path}/converse", converse, methods=["POST"]),
            Route("/model/{model_id:path}/converse-stream", converse, methods=["POST"]),
            Route("/model/{model_id:path}/invoke", invoke, methods=["POST"]),
            Route("/foundation-models", foundation_models, methods=["GET"]),
        ]
    )
    app.state.requests = []
    app.state.disconnects = 0
    return app
