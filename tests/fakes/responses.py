"""Response helpers: JSON bodies and streams that can be paced or cut mid-way."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from .behaviour import STALL_SECONDS, Trigger, pause


class AbortStream(Exception):
    """Raised by a body iterator to drop the connection mid-response."""


class AbortableStreamingResponse(StreamingResponse):
    """A StreamingResponse whose iterator may raise :class:`AbortStream`.

    On abort the final (empty, ``more_body=False``) body message is never sent,
    so uvicorn closes the socket with the chunked body unterminated - exactly
    what a client sees when an upstream dies mid-stream.
    """

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.body_iterator:
                data = (
                    chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
                )
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except AbortStream:
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def paced_stream(
    head: Sequence[bytes],
    body: Sequence[bytes],
    tail: Sequence[bytes],
    trigger: Trigger,
    request: Request | None = None,
) -> AsyncIterator[bytes]:
    """Yield ``head + body + tail``, applying the trigger's delay, stall and cut.

    ``body`` holds the content chunks: ``cut-<n>`` yields at most ``n`` of them and
    then aborts; ``stall`` pauses after the first one.
    """
    if trigger.delay:
        await pause(trigger.delay, request)
    for chunk in head:
        yield chunk
    for index, chunk in enumerate(body):
        if trigger.cut_after is not None and index >= trigger.cut_after:
            break
        yield chunk
        if trigger.stall and index == 0:
            await pause(STALL_SECONDS, request)
    if trigger.cut_after is not None:
        raise AbortStream
    for chunk in tail:
        yield chunk


def json_response(
    content: Any,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def retry_headers(status: int) -> dict[str, str]:
    return {"Retry-After": "1"} if status == 429 else {}
