"""An ASGI response for token streams that (1) always closes the upstream, (2) cancels it the
moment the client disconnects, and (3) reports a mid-stream failure in the client's protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from switchboard.errors import SwitchboardError
from switchboard.gateway.streams import ClientStream
from switchboard.providers.base import JSON


class StreamResponse(Response):
    def __init__(
        self,
        stream: ClientStream,
        *,
        media_type: str,
        encode: Callable[[list[JSON]], bytes],
        encode_error: Callable[[SwitchboardError], bytes],
        trailer: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self._stream = stream
        self._encode = encode
        self._encode_error = encode_error
        self._trailer = trailer
        raw = [(b"content-type", media_type.encode()), (b"cache-control", b"no-cache")]
        raw += headers
        self._raw_headers = raw
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        stream = self._stream

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            stream.client_gone()
            task.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._raw_headers})
            try:
                async for batch in stream:
                    body = self._encode(batch)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                tail = self._trailer
            except SwitchboardError as exc:
                stream.fail(exc)
                tail = self._encode_error(exc) + self._trailer
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            stream.client_gone()
            # Swallow only our own cancellation (the watcher's); a server shutdown propagates.
            if not watcher.done() or task.uncancel() > 0:
                raise
        except OSError:  # the server reports a write to a closed connection
            stream.client_gone()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await stream.aclose()
