"""The upstream HTTP/1.1 client (`switchboard.providers.http1`) against raw asyncio servers
on loopback that answer byte for byte as each case needs: pooling, framing, servers that
hang up, timeouts, cancellation, large bodies, header casing, TLS.

Every case runs on the standard asyncio loop, and again on uvloop (what `switchboard serve`
uses) by `test_on_uvloop`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import trustme
import uvloop

from switchboard.providers.http1 import (
    HIGH_WATER,
    Client,
    ConnectionClosed,
    ProtocolError,
    Response,
    encode_headers,
    split_url,
)

LIMIT = 10.0  # seconds any one case may take
WAIT = 2.0  # how soon a server must see the client hang up

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Server:
    """Counts connections, requests and hang-ups; ``handler`` serves each connection."""

    handler: Handler
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    disconnects: int = 0
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            self.disconnects += 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> Request | None:
        """The next request on the connection; None once the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        start, *lines = head.decode("latin-1").split("\r\n")[:-2]
        method, target, _ = start.split(" ")
        headers = [(n, v) for n, _, v in (line.partition(": ") for line in lines)]
        length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
        request = Request(method, target, headers, await reader.readexactly(length))
        self.requests.append(request)
        return request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_disconnects(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.disconnects < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert self.disconnects == count


Serve = Callable[..., Awaitable[Server]]


class Servers:
    """Starts servers for one case (``start`` is the case's ``serve``); closes them after."""

    def __init__(self) -> None:
        self._listeners: list[asyncio.Server] = []
        self._servers: list[Server] = []

    async def start(self, handler: Handler, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(handler)
        self._servers.append(server)
        listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
        self._listeners.append(listener)
        server.port = listener.sockets[0].getsockname()[1]
        return server

    async def close(self) -> None:
        """Stop listening; give handlers a moment to see their clients go, then stop them."""
        for listener in self._listeners:
            listener.close()
        deadline = time.monotonic() + WAIT
        while any(s.open_now for s in self._servers) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for server in self._servers:
            for task in server.tasks:
                task.cancel()
            await asyncio.gather(*server.tasks, return_exceptions=True)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers = Servers()
    yield servers.start
    await servers.close()


def client(**overrides: float) -> Client:
    options = {"connect_timeout": 2.0, "read_timeout": 5.0, "max_connections": 8, **overrides}
    return Client(
        connect_timeout=options["connect_timeout"],
        read_timeout=options["read_timeout"],
        max_connections=int(options["max_connections"]),
    )


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def gather_chunks(resp: Response, into: list[bytes]) -> None:
    async for chunk in resp.iter_chunks():
        into.append(chunk)  # noqa: PERF401 (what came before a failure is kept)


async def echo(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: each request is answered with its own body (or its target)."""
    while (request := await server.read_request(reader)) is not None:
        writer.write(response(request.body or request.target.encode()))
        await writer.drain()


async def stall(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request, never answers; returns when the client hangs up."""
    await server.read_request(reader)
    await reader.read()


# --- pooling ----------------------------------------------------------------------------------


async def test_keep_alive_connection_is_reused(serve: Serve) -> None:
    server = await serve(echo)
    http = client()
    async with asyncio.timeout(LIMIT):
        for n in range(5):
            resp = await http.request("POST", server.url + "/x", body=b"ping %d" % n)
            assert resp.status == 200
            assert await resp.read() == b"ping %d" % n
        await http.aclose()
        await server.wait_disconnects(1)
    assert server.connections == 1
    assert [r.method for r in server.requests] == ["POST"] * 5


async def test_connections_are_bounded(serve: Serve) -> None:
    async def slow(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            await asyncio.sleep(0.05)
            w.write(response(request.target.encode()))

    server = await serve(slow)
    http = client(max_connections=2)

    async def one(n: int) -> bytes:
        resp = await http.request("GET", f"{server.url}/{n}")
        return await resp.read()

    async with asyncio.timeout(LIMIT):
        bodies = await asyncio.gather(*(one(n) for n in range(6)))
    await http.aclose()
    assert bodies == [f"/{n}".encode() for n in range(6)]
    assert server.connections == 2
    assert server.most_open == 2


async def test_connection_close_is_honoured(serve: Serve) -> None:
    async def once(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        w.write(response(b"bye", "Connection: close"))
        await w.drain()
        await reader.read()  # the client closes

    server = await serve(once)
    http = client()
    async with asyncio.timeout(LIMIT):
        for _ in range(3):
            resp = await http.request("GET", server.url + "/")
            assert await resp.read() == b"bye"
        await server.wait_disconnects(3)
    await http.aclose()
    assert server.connections == 3


@pytest.mark.parametrize("pause", [0.0, 0.1], ids=["at-once", "after-a-pause"])
async def test_server_closing_an_idle_connection(serve: Serve, pause: float) -> None:
    """The upstream answers keep-alive, then closes the connection without saying so: the
    next request goes out on a new one, whether or not the close was noticed yet."""

    async def one_then_close(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        request = await server.read_request(reader)
        assert request is not None
        w.write(response(request.target.encode()))
        await w.drain()

    server = await serve(one_then_close)
    http = client()
    async with asyncio.timeout(LIMIT):
        for n in range(3):
            resp = await http.request("GET", f"{server.url}/{n}")
            assert await resp.read() == f"/{n}".encode()
            await asyncio.sleep(pause)
    await http.aclose()
    assert server.connections == 3


async def test_no_retry_on_a_fresh_connection(serve: Serve) -> None:
    async def hang_up(
        server: Server, reader: asyncio.StreamReader, _: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)

    server = await serve(hang_up)
    http = client()
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ConnectionClosed):
            await http.request("POST", server.url + "/", body=b"once")
    await http.aclose()
    assert len(server.requests) == 1  # sent once, never again


async def test_idle_connections_expire(serve: Serve) -> None:
    server = await serve(echo)
    http = Client(connect_timeout=2, read_timeout=5, max_connections=4, keepalive=0.05)
    async with asyncio.timeout(LIMIT):
        for _ in range(2):
            resp = await http.request("GET", server.url + "/")
            await resp.read()
            await asyncio.sleep(0.1)
        await server.wait_disconnects(1)  # the expired one was closed, not reused
    await http.aclose()
    assert server.connections == 2


async def test_unsolicited_bytes_drop_the_connection(
    serve: Serve,
) -> None:
    async def chatty(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            w.write(response(request.target.encode()) + b"HTTP/1.1 200 OK\r\n")

    server = await serve(chatty)
    http = client()
    async with asyncio.timeout(LIMIT):
        for n in range(2):
            resp = await http.request("GET", f"{server.url}/{n}")
            assert await resp.read() == f"/{n}".encode()
            await asyncio.sleep(0.05)
    await http.aclose()
    assert server.connections == 2


# --- framing ----------------------------------------------------------------------------------


async def test_chunked_body(serve: Serve) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]

    async def chunked(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await server.read_request(reader) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await w.drain()
                await asyncio.sleep(0.02)
            w.write(b"0\r\n\r\n")

    server = await serve(chunked)
    http = client()
    async with asyncio.timeout(LIMIT):
        resp = await http.request("POST", server.url + "/stream", body=b"{}")
        received = [chunk async for chunk in resp.iter_chunks()]
        assert b"".join(received) == b"".join(pieces)
        assert len(received) == 3  # each arrived on its own
        resp = await http.request("POST", server.url + "/stream", body=b"{}")
        assert await resp.read() == b"".join(pieces)
    await http.aclose()
    assert server.connections == 1


async def test_body_until_the_server_closes(serve: Serve) -> None:
    async def unframed(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst ")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"and last")
        await w.drain()

    server = await serve(unframed)
    http = client()
    async with asyncio.timeout(LIMIT):
        for _ in range(2):
            resp = await http.request("GET", server.url + "/")
            assert await resp.read() == b"first and last"
    await http.aclose()
    assert server.connections == 2


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_server_closing_mid_body(serve: Serve, framing: str) -> None:
    async def cut(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if framing == "chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
        await w.drain()
        await asyncio.sleep(0.05)

    server = await serve(cut)
    http = client()
    async with asyncio.timeout(LIMIT):
        resp = await http.request("GET", server.url + "/")
        received: list[bytes] = []
        with pytest.raises(ConnectionClosed):
            await gather_chunks(resp, received)
        assert received == [b"hello"]
        resp = await http.request("GET", server.url + "/")
        with pytest.raises(ConnectionClosed):
            await resp.read()
    await http.aclose()


async def test_informational_response_is_skipped(serve: Serve) -> None:
    async def hints(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
            w.write(response(b"done", "X-Final: yes", status="201 Created"))

    server = await serve(hints)
    http = client()
    async with asyncio.timeout(LIMIT):
        resp = await http.request("GET", server.url + "/")
        assert resp.status == 201
        assert resp.header("x-final") == "yes"
        assert resp.header("link") is None
        assert await resp.read() == b"done"
    await http.aclose()


async def test_garbage_is_a_protocol_error(serve: Serve) -> None:
    async def garbage(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        w.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await reader.read()

    server = await serve(garbage)
    http = client()
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ProtocolError):
            await http.request("GET", server.url + "/")
        await server.wait_disconnects(1)
    await http.aclose()


async def test_large_bodies_both_ways(serve: Serve) -> None:
    """8 MiB up with Content-Length; 8 MiB down chunked, read as a stream slower than it
    comes (reading pauses past the high-water mark) and read whole."""
    size = 8 * 1024 * 1024
    upload = bytes(range(256)) * (size // 256)

    async def digest(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            if request.method == "POST":
                w.write(response(hashlib.sha256(request.body).hexdigest().encode()))
                continue
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"x" * 65536
            for _ in range(size // len(piece)):
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await w.drain()
            w.write(b"0\r\n\r\n")

    server = await serve(digest)
    http = client()
    async with asyncio.timeout(LIMIT):
        resp = await http.request("POST", server.url + "/", body=upload)
        assert (await resp.read()).decode() == hashlib.sha256(upload).hexdigest()
        resp = await http.request("GET", server.url + "/")
        total, largest = 0, 0
        async for chunk in resp.iter_chunks():
            total += len(chunk)
            largest = max(largest, len(chunk))
            await asyncio.sleep(0.001)
        assert total == size
        assert largest <= HIGH_WATER + 512 * 1024  # one more read may land after the pause
        resp = await http.request("GET", server.url + "/")
        assert len(await resp.read()) == size
    await http.aclose()
    assert server.connections == 1


# --- headers ----------------------------------------------------------------------------------


async def test_header_casing(serve: Serve) -> None:
    async def headers(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        w.write(response(b"", "X-Amzn-ErrorType: ThrottlingException", "Vary: a", "vary: b"))
        await reader.read()

    server = await serve(headers)
    http = client()
    sent = {"x-api-key": "k", "Anthropic-Version": "2023-06-01", "X-Amz-Date": "20250101T000000Z"}
    async with asyncio.timeout(LIMIT):
        resp = await http.request("POST", server.url + "/v1/messages?beta=true", headers=sent)
        assert resp.header("x-amzn-errortype") == "ThrottlingException"
        assert resp.header("X-AMZN-ERRORTYPE") == "ThrottlingException"
        assert resp.headers["vary"] == "a, b"
    await http.aclose()
    [request] = server.requests
    assert request.target == "/v1/messages?beta=true"
    assert request.headers[0] == ("Host", f"127.0.0.1:{server.port}")
    assert request.headers[1:4] == list(sent.items())
    assert ("Content-Length", "0") not in request.headers  # no body, no framing


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="not allow"):
        encode_headers([("X-Evil", "a\r\nHost: elsewhere")])
    with pytest.raises(ValueError, match="not allow"):
        encode_headers([("X Evil", "a")])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/v1", ("http", "127.0.0.1", 8080, "127.0.0.1:8080", "/v1")),
        ("https://api.example.com", ("https", "api.example.com", 443, "api.example.com", "/")),
        ("https://h.example:443/a?b=1", ("https", "h.example", 443, "h.example", "/a?b=1")),
        ("http://u:p@h.example?x", ("http", "h.example", 80, "h.example", "/?x")),
        ("http://[::1]:9000/m%3A1", ("http", "::1", 9000, "[::1]:9000", "/m%3A1")),
        ("http://[::1]/", ("http", "::1", 80, "[::1]", "/")),
    ],
)
def test_split_url(url: str, expected: tuple[str, str, int, str, str]) -> None:
    assert split_url(url) == expected


def test_split_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="not an http"):
        split_url("ftp://example.com/")


# --- timeouts and cancellation ----------------------------------------------------------------


async def test_read_timeout_before_the_response(serve: Serve) -> None:
    server = await serve(stall)
    http = client(read_timeout=0.2)
    async with asyncio.timeout(LIMIT):
        with pytest.raises(TimeoutError):
            await http.request("POST", server.url + "/", body=b"{}")
        await server.wait_disconnects(1)
    await http.aclose()


async def test_read_timeout_mid_body(serve: Serve) -> None:
    async def trickle(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):  # a byte every 0.1 s keeps a 0.3 s read timeout at bay
            w.write(b"1\r\na\r\n")
            await w.drain()
            await asyncio.sleep(0.1)
        await reader.read()  # then silence

    server = await serve(trickle)
    http = client(read_timeout=0.3)
    received: list[bytes] = []
    async with asyncio.timeout(LIMIT):
        resp = await http.request("GET", server.url + "/")
        with pytest.raises(TimeoutError):
            await gather_chunks(resp, received)
        await server.wait_disconnects(1)
    await http.aclose()
    assert b"".join(received) == b"aaa"


async def test_connect_timeout() -> None:
    """A listener whose accept queue is full drops further connection attempts."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue (its size varies with the kernel)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            await asyncio.sleep(0.05)
            http = client(connect_timeout=0.3)
            started = time.monotonic()
            async with asyncio.timeout(LIMIT):
                with pytest.raises(TimeoutError):
                    await http.request("GET", f"http://127.0.0.1:{port}/")
            assert time.monotonic() - started < 3
            await http.aclose()
        finally:
            for filler in fillers:
                filler.close()


async def test_cancelling_hangs_up(serve: Serve) -> None:
    """A request cancelled while it waits (the gateway's first-byte and total limits, a
    client gone) closes its connection; the upstream sees it, the slot is freed."""
    server = await serve(stall)
    http = client(max_connections=1)
    async with asyncio.timeout(LIMIT):
        task = asyncio.create_task(http.request("POST", server.url + "/", body=b"{}"))
        while not server.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_disconnects(1)
        with pytest.raises(TimeoutError):  # the one slot is free again
            async with asyncio.timeout(0.2):
                await http.request("POST", server.url + "/", body=b"{}")
        await server.wait_disconnects(2)
    await http.aclose()


async def test_closing_a_half_read_response_hangs_up(
    serve: Serve,
) -> None:
    async def endless(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await server.read_request(reader) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await w.drain()
            await reader.read()

    server = await serve(endless)
    http = client()
    async with asyncio.timeout(LIMIT):
        resp = await http.request("GET", server.url + "/")
        async for chunk in resp.iter_chunks():
            assert chunk == b"first"
            break
        resp.close()
        await server.wait_disconnects(1)
        resp = await http.request("GET", server.url + "/")  # a new connection
        assert resp.status == 200
        resp.close()
    await http.aclose()
    assert server.connections == 2


async def test_error_body_is_read_up_to_a_limit(serve: Serve) -> None:
    async def big(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        w.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 1000000\r\n\r\n" + b"e" * 100_000)
        await reader.read()

    server = await serve(big)
    http = client()
    async with asyncio.timeout(LIMIT):
        resp = await http.request("GET", server.url + "/")
        assert resp.status == 500
        assert await resp.read(1000) == b"e" * 1000
        await server.wait_disconnects(1)  # the rest is not waited for
    await http.aclose()


# --- TLS --------------------------------------------------------------------------------------


async def test_tls(serve: Serve) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    server = await serve(echo, tls=server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    http = Client(connect_timeout=2, read_timeout=5, max_connections=4, ssl_context=trusting)
    url = f"https://127.0.0.1:{server.port}"
    async with asyncio.timeout(LIMIT):
        for n in range(3):
            resp = await http.request("POST", url + "/v1/chat", body=b"secret %d" % n)
            assert await resp.read() == b"secret %d" % n
    await http.aclose()
    assert server.connections == 1
    assert server.requests[0].headers[0] == ("Host", f"127.0.0.1:{server.port}")

    untrusting = client()  # the system trust store has never heard of this CA
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusting.request("GET", url + "/")
    await untrusting.aclose()


# --- the same cases on uvloop -----------------------------------------------------------------

Case = Callable[[Serve], Awaitable[None]]
UVLOOP_CASES: dict[str, Case] = {
    "keep_alive": test_keep_alive_connection_is_reused,
    "bounded": test_connections_are_bounded,
    "connection_close": test_connection_close_is_honoured,
    "idle_closed_at_once": partial(test_server_closing_an_idle_connection, pause=0.0),
    "idle_closed_after_a_pause": partial(test_server_closing_an_idle_connection, pause=0.1),
    "no_retry": test_no_retry_on_a_fresh_connection,
    "expiry": test_idle_connections_expire,
    "unsolicited": test_unsolicited_bytes_drop_the_connection,
    "chunked": test_chunked_body,
    "until_close": test_body_until_the_server_closes,
    "cut_length": partial(test_server_closing_mid_body, framing="content-length"),
    "cut_chunked": partial(test_server_closing_mid_body, framing="chunked"),
    "informational": test_informational_response_is_skipped,
    "garbage": test_garbage_is_a_protocol_error,
    "large": test_large_bodies_both_ways,
    "headers": test_header_casing,
    "read_timeout": test_read_timeout_before_the_response,
    "read_timeout_mid_body": test_read_timeout_mid_body,
    "cancel": test_cancelling_hangs_up,
    "half_read": test_closing_a_half_read_response_hangs_up,
    "error_limit": test_error_body_is_read_up_to_a_limit,
    "tls": test_tls,
}


@pytest.mark.parametrize("case", list(UVLOOP_CASES))
def test_on_uvloop(case: str) -> None:
    async def main() -> None:
        servers = Servers()
        try:
            await UVLOOP_CASES[case](servers.start)
        finally:
            await servers.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
