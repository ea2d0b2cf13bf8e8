"""The HTTP/1.1 protocol `switchboard serve` runs: uvicorn's httptools protocol, with each
response head sent together with the first bytes of its body, and checked in one pass.

uvicorn writes a response's status line and headers when the app sends
``http.response.start``, and its body on ``http.response.body``: two ``send`` system calls for
every JSON answer, and on loopback each one also runs the receiving side of TCP. Both messages
are sent in the same step of the app's task, so `CorkedTransport` holds the head and sends it
with the body's first bytes, in one call; a head is never held past the current loop step.

uvicorn also checks every header name and value for forbidden bytes with two regular
expression searches per header: with the x-ratelimit and x-switchboard headers, 26 searches a
response, most of their time spent walking a character class byte by byte. `HeadCycle`
writes the same head after one check of all names and one of all values (``bytes.translate``
with uvicorn's own forbidden bytes, in C); everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)


class CorkedTransport:
    """Wraps a transport: a response head is held until the body's first write, which sends
    both in one call; a head still held when the loop step ends (a stream whose first chunk
    comes later, a response without a body) is sent then. Everything else is the wrapped
    transport's; closing sends what is held first."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif data[:9] == b"HTTP/1.1 ":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        return len(self._held or b"") + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# The bytes uvicorn's patterns refuse in a header name and in a header value.
_BAD_NAME = bytes(b for b in range(256) if HEADER_RE.search(bytes([b])))
_BAD_VALUE = bytes(b for b in range(256) if HEADER_VALUE_RE.search(bytes([b])))
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))  # read by uvicorn


class HeadCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing the response head itself (see the module
    docstring); what it writes is byte for byte what uvicorn writes (a test compares them).
    Whatever else it leaves to uvicorn: the body, the access log, a paused or lost client."""

    async def send(self, message: Any) -> None:
        if (
            self.response_started
            or message["type"] != "http.response.start"
            or self.access_log
            or self.disconnected
            or self.flow.write_paused
        ):
            await super().send(message)
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        names = b"".join([name for name, _ in headers])
        if len(names.translate(None, _BAD_NAME)) != len(names):
            raise RuntimeError("Invalid HTTP header name.")
        values = b"".join([value for _, value in headers])
        if len(values.translate(None, _BAD_VALUE)) != len(values):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status_code]]
        closes = False
        for name, value in headers:
            lowered = name.lower()
            if lowered not in _FRAMING:  # most headers: one set lookup, not three comparisons
                pass
            elif lowered == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif lowered == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif lowered == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                self.keep_alive = False
                closes = True
            content += (lowered, b": ", value, b"\r\n")
        if not self.keep_alive and not closes:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status_code not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CorkedTransport`, its cycles `HeadCycle`s."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass; it has the same methods.
        corked: Any = CorkedTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(corked)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # A new request's cycle (an upgrade makes none); its task starts on a later loop step.
        if cycle is not before and type(cycle) is RequestResponseCycle:
            cycle.__class__ = HeadCycle
