"""The HTTP protocol `switchboard serve` runs: uvicorn's httptools protocol over a transport
that sends a response head together with the first bytes of its body."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from fakes.server import ServerThread
from switchboard.api.http_protocol import CorkedHttpToolsProtocol, CorkedTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def corked() -> tuple[CorkedTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CorkedTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_head_and_body_written_in_one_step_go_out_in_one_write() -> None:
    transport, inner = corked()
    transport.write(HEAD)
    assert inner.writes == []
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert inner.writes == [HEAD + b"{}"]


async def test_a_head_alone_is_sent_when_the_loop_step_ends() -> None:
    transport, inner = corked()
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]
    transport.write(b"later")  # a stream's first chunk, in a later step: straight through
    assert inner.writes == [HEAD, b"later"]


async def test_body_writes_pass_straight_through() -> None:
    transport, inner = corked()
    transport.write(b"chunk one")
    transport.write(b"")
    transport.writelines([b"a", b"b"])
    assert inner.writes == [b"chunk one", b"", b"ab"]


async def test_close_sends_a_held_head_first_and_abort_drops_it() -> None:
    transport, inner = corked()
    transport.write(HEAD)
    transport.close()
    assert inner.writes == [HEAD]
    assert inner.closed
    transport, inner = corked()
    transport.write(HEAD)
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == []
    assert inner.aborted


async def test_nothing_is_written_to_a_closing_transport() -> None:
    transport, inner = corked()
    transport.write(HEAD)
    inner.closed = True
    await asyncio.sleep(0)
    assert inner.writes == []


async def test_other_transport_methods_are_the_wrapped_ones() -> None:
    transport, _ = corked()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/json":
        body = b'{"ok": true}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        body = b"x" * (4 * 1024 * 1024)
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send(
            {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}
        )
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def server() -> Any:
    with ServerThread(_app, http=CorkedHttpToolsProtocol) as running:
        yield running


def test_responses_over_one_keep_alive_connection(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            reply = client.get("/json")
            assert reply.status_code == 200
            assert reply.json() == {"ok": True}
        assert client.get("/stream").text == "part0;part1;part2;"
        assert client.get("/empty").status_code == 204
        assert client.head("/json").status_code == 200
        assert client.get("/missing").status_code == 404
        big = client.get("/big")
        assert len(big.content) == 4 * 1024 * 1024
        assert client.get("/json").json() == {"ok": True}


def test_a_head_request_is_answered_at_once_on_a_kept_alive_connection(
    server: ServerThread,
) -> None:
    """uvicorn writes no body for HEAD: the held head must still leave within the step."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"HEAD /json HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(4096)
                assert chunk, "the server closed the connection"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 OK")
            assert reply.endswith(b"\r\n\r\n")


def test_pipelined_requests_are_answered_in_order(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n" * 2
            + b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        data = b""
        while data.count(b"HTTP/1.1 ") < 3 or not data.endswith(b"\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        statuses = [part.split(b"\r\n", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]
        assert statuses == [b"200 OK", b"200 OK", b"404 Not Found"]
