"""The HTTP protocol `switchboard serve` runs: uvicorn's httptools protocol over a transport
that sends a response head together with the first bytes of its body."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from fakes.server import ServerThread
from switchboard.api.http_protocol import CorkedHttpToolsProtocol, CorkedTransport, HeadCycle

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
    elif path == "/cycle":  # which request/response cycle serves this request
        body = type(getattr(send, "__self__", None)).__name__.encode()
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


# -- the response head, checked in one pass ---------------------------------------------------


def _cycle(kind: type[RequestResponseCycle], method: str, keep_alive: bool) -> Any:
    transport = RecordingTransport()
    cycle = kind(
        scope={"method": method, "type": "http"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[(b"date", b"Mon, 07 Dec 2026 16:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    return cycle, transport


HEADS: list[tuple[str, int, list[tuple[bytes, bytes]], bool]] = [
    ("POST", 200, [(b"content-type", b"application/json"), (b"content-length", b"2")], True),
    ("POST", 200, [(b"Content-Type", b"text/event-stream"), (b"X-Request-Id", b"req_1")], True),
    ("POST", 200, [(b"transfer-encoding", b"chunked")], True),
    ("GET", 200, [(b"content-length", b"0"), (b"connection", b"keep-alive, Close")], True),
    ("GET", 200, [(b"content-length", b"5")], False),
    ("HEAD", 200, [(b"x-ratelimit-remaining-requests", b"59")], True),
    ("GET", 204, [], True),
    ("GET", 304, [(b"etag", b'"abc"')], True),
    ("POST", 429, [(b"retry-after", b"1"), (b"x-ratelimit-reset-tokens", b"1m0.5s")], True),
    ("GET", 200, [(b"content-length", b"5"), (b"Content-Length", b"7")], True),  # the first
    ("POST", 200, [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], True),
    ("POST", 200, [(b"content-length", b"3"), (b"Transfer-Encoding", b"Chunked")], True),
    ("GET", 200, [(b"Content-Length", b"1"), (b"Connection", b"close")], False),
    ("GET", 200, [(b"content-length", b"1"), (b"connection", b"keep-alive")], False),
    ("GET", 200, [(b"transfer-encoding", b"gzip")], True),
    ("POST", 200, [(f"x-h{i}".encode(), f"v{i}".encode()) for i in range(15)], True),
]


async def _same_head_as_uvicorn(
    method: str, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> None:
    message = {"type": "http.response.start", "status": status, "headers": headers}
    ours, ours_out = _cycle(HeadCycle, method, keep_alive)
    theirs, theirs_out = _cycle(RequestResponseCycle, method, keep_alive)
    await ours.send(message)
    await theirs.send(message)
    assert ours_out.writes == theirs_out.writes, headers
    state = ("response_started", "chunked_encoding", "expected_content_length", "keep_alive")
    assert [getattr(ours, a) for a in state] == [getattr(theirs, a) for a in state], headers


@pytest.mark.parametrize(("method", "status", "headers", "keep_alive"), HEADS)
async def test_the_head_is_what_uvicorn_writes(
    method: str, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> None:
    await _same_head_as_uvicorn(method, status, headers, keep_alive)


_VOCABULARY = [
    (b"content-type", b"application/json"),
    (b"Content-Length", b"12"),
    (b"content-length", b"3"),
    (b"transfer-encoding", b"chunked"),
    (b"Transfer-Encoding", b"identity"),
    (b"connection", b"close"),
    (b"Connection", b"Upgrade, keep-alive"),
    (b"x-ratelimit-remaining-requests", b"59"),
    (b"X-Request-Id", b"req_1"),
    (b"retry-after", b"1"),
]


@pytest.mark.parametrize("seed", range(3))
async def test_random_heads_are_what_uvicorn_writes(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        headers = [rng.choice(_VOCABULARY) for _ in range(rng.randint(0, 6))]
        method, status = rng.choice(["GET", "POST", "HEAD"]), rng.choice([200, 204, 304, 429])
        await _same_head_as_uvicorn(method, status, headers, rng.random() < 0.7)


@pytest.mark.parametrize(
    "header", [(b"bad name", b"x"), (b"x-ok", b"split\r\nset-cookie: a=b"), (b"x-ok", b"\x00")]
)
async def test_a_forbidden_header_byte_is_refused_as_uvicorn_refuses_it(
    header: tuple[bytes, bytes],
) -> None:
    message = {"type": "http.response.start", "status": 200, "headers": [header]}
    for kind in (HeadCycle, RequestResponseCycle):
        cycle, out = _cycle(kind, "GET", True)
        with pytest.raises(RuntimeError, match="Invalid HTTP header"):
            await cycle.send(message)
        assert out.writes == []


def test_served_requests_run_in_head_cycles(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(2):  # a new cycle for each request on a kept-alive connection
            assert client.get("/cycle").text == "HeadCycle"
