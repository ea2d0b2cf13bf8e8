"""A lean HTTP/1.1 client for upstream calls, on asyncio protocols and httptools' parser.

Every adapter's request goes through here, so it is kept to what upstream model APIs need and
made cheap: one ``transport.write`` per request (head and body joined), no per-request
objects beyond the `Response`, a timer armed once per request for the read timeout.

* `Client` holds one `Pool` per origin (scheme, host, port). A pool keeps at most ``limit``
  connections open, reuses idle ones last-in first-out, closes those idle longer than
  ``keepalive`` seconds, and drops any connection that failed, was closed by the upstream,
  said ``Connection: close``, or whose response was abandoned half-read.
* Bodies: requests are sent with ``Content-Length``; responses may use ``Content-Length``,
  chunked transfer coding, or run until the upstream closes. A response can be read whole
  (`Response.read`) or as it arrives (`Response.iter_chunks`), for event streams; reading
  pauses while more than `HIGH_WATER` bytes wait unread.
* Timeouts: ``connect_timeout`` for TCP (and TLS) set-up; ``read_timeout`` for the longest
  silence while a response is awaited or read. First-byte and whole-request limits are the
  caller's (``asyncio.timeout``): a cancelled request closes its connection, so the upstream
  sees the hang-up and stops generating.
* ``https`` origins use TLS with the system's trust store (``SSL_CERT_FILE`` is honoured), or
  the ``ssl_context`` given.
* A request sent on a reused keep-alive connection that the upstream closed before answering
  a single byte (it timed the idle connection out as the request left) is sent once more on
  a new connection; nothing else is retried.

Not supported, as no upstream adapter needs them: proxies, compression (no
``Accept-Encoding`` is sent), ``HEAD``, ``Expect: 100-continue``, upgrades, HTTP/2.

Failures are the builtin ones, for the transport layer to map: `TimeoutError` for a connect
or read timeout, `ConnectionError` (`ConnectionClosed`, `ProtocolError`) when the upstream
hung up or spoke something other than HTTP/1.1, other `OSError` from connecting (refused,
DNS, TLS verification).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from functools import cache
from typing import Final, cast

import httptools

HIGH_WATER: Final = 1024 * 1024  # unread response bytes at which reading pauses
KEEPALIVE: Final = 30.0  # seconds an idle connection is kept for reuse


class ConnectionClosed(ConnectionError):
    """The upstream closed the connection before the response ended."""


class ProtocolError(ConnectionError):
    """The upstream's reply was not valid HTTP/1.1."""


@cache
def default_ssl_context() -> ssl.SSLContext:
    """The system trust store, verified, HTTP/1.1 offered over ALPN; built once (it reads
    certificate files)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def encode_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """``Name: value\\r\\n`` lines, names in the caseing given; CR, LF and NUL refused."""
    lines = []
    for name, value in headers:
        line = f"{name}: {value}\r\n"
        if any(c in name for c in "\r\n\0: ") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} holds a character HTTP does not allow")
        lines.append(line.encode("latin-1"))
    return b"".join(lines)


def split_url(url: str) -> tuple[str, str, int, str, str]:
    """``(scheme, host, port, host_header, target)`` of an absolute http(s) URL; the target
    (path and query) is kept byte for byte as given, so signed URLs stay as signed."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut].rpartition("@")[2], rest[cut:]  # userinfo is never sent
    if not target.startswith("/"):
        target = "/" + target
    if authority.startswith("["):  # an IPv6 literal
        host, _, after = authority[1:].partition("]")
        port_text = after[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise ValueError(f"no host in URL: {url!r}")
    default = 443 if scheme == "https" else 80
    port = int(port_text) if port_text else default
    if port_text and port != default:
        host_header = authority
    else:
        host_header = f"[{host}]" if ":" in host else host
    return scheme, host, port, host_header, target


class Response:
    """One response: its status and headers once `Client.request` returns, its body as it
    arrives. Read it to the end, or `close` it: a response left half-read holds its
    connection until closed."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_headers",
        "_raw_headers",
        "_read_all",
        "_unread",
        "_waiter",
        "status",
    )

    def __init__(self, conn: Connection) -> None:
        self.status = 0
        self._conn: Connection | None = conn
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] | None = None
        self._chunks: list[bytes] = []
        self._unread = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_all = False

    @property
    def headers(self) -> dict[str, str]:
        """The headers, names lower-cased; repeated headers joined with ``", "``."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw_name, raw_value in self._raw_headers:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return self._headers

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def complete(self) -> bool:
        return self._complete

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body; with ``limit``, at most about that many bytes, and the
        connection is dropped if more would follow."""
        self._read_all = limit is None
        while not self._complete and (limit is None or self._unread < limit):
            await self._wait()
        data = self._take() if self._chunks else b""
        if limit is not None and not self._complete:
            self.close()
            return data[:limit]
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything received since the last step, joined."""
        try:
            while True:
                if self._chunks:
                    yield self._take()
                elif self._complete:
                    return
                else:
                    await self._wait()
        finally:
            if not self._complete:
                self.close()

    def release(self) -> None:
        """Done with the response: a fully read one has already given its connection back;
        an unfinished one loses it."""
        if not self._complete:
            self.close()

    def close(self) -> None:
        """Abandon the response; unless it was complete, its connection is closed, which
        tells the upstream the client is gone."""
        conn = self._conn
        if conn is not None and not self._complete:
            conn.close()
            if self._error is None:
                self._error = ConnectionClosed("the response was closed before its end")
        self._conn = None

    # --- fed by the connection --------------------------------------------------------

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._unread = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        conn = self._conn
        assert conn is not None
        if conn.paused:
            conn.resume()
        waiter = conn.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; serves one request at a time."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.checked_out = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._headers_done = False
        self._finished = False
        self._received = False
        self._keep_alive = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- the request ------------------------------------------------------------------

    def start(self, data: bytes, response: Response) -> None:
        transport = self.transport
        assert transport is not None
        self._response = response
        self._headers_done = False
        self._received = False
        now = self.loop.time()
        self._last_read = now
        self._timer = self.loop.call_at(now + self.pool.read_timeout, self._on_timer)
        transport.write(data)

    @property
    def received(self) -> bool:
        """Whether any byte of the current response has arrived."""
        return self._received

    def close(self) -> None:
        self._finished = False
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._end(None)

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _end(self, error: BaseException | None) -> None:
        """The current response, if any, ends: with ``error`` unless it was complete."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response = self._response
        self._response = None
        if response is not None and not response._complete:
            if response._error is None:
                response._error = error or ConnectionClosed("the connection was closed")
            response._wake()
        if self.checked_out:
            self.checked_out = False
            self.pool.checked_in(self)

    def _on_timer(self) -> None:
        self._timer = None
        if self._response is None:
            return
        now = self.loop.time()
        due = self._last_read + self.pool.read_timeout
        if self.paused:  # the reader is slow, not the upstream
            self._last_read = now
            due = now + self.pool.read_timeout
        if due > now:
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        timeout = self.pool.read_timeout
        self._fail(TimeoutError(f"no data from the upstream for {timeout:g} s"))

    def _fail(self, error: BaseException) -> None:
        response = self._response
        if response is not None and response._error is None and not response._complete:
            response._error = error
        self.close()

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:  # nothing was asked: the upstream is out of step
            self.close()
            return
        self._received = True
        self._last_read = self.loop.time()
        error: ProtocolError | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            error = ProtocolError("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            error = ProtocolError(f"invalid HTTP response: {exc}")
        # The parser's callbacks only record; the reader is woken once per read.
        if response._chunks:
            response._unread += len(data)  # framing included: a bound, not a count
            if response._unread > HIGH_WATER and not response._read_all and not self.paused:
                self.paused = True
                assert self.transport is not None
                self.transport.pause_reading()
        response._wake()
        if error is not None:
            self._fail(error)
        elif self._finished:
            self._finished = False
            self._end(None)
            if not self.pool.keep(self):
                self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self._response
        if (
            response is not None
            and self._headers_done
            and not response._complete
            and not _framed(response._raw_headers)
        ):
            # A body without length or chunking runs until the upstream closes.
            response._complete = True
            response._wake()
        error = ConnectionClosed(f"the upstream closed the connection: {exc or 'EOF'}")
        if exc is not None:
            error.__cause__ = exc
        self._end(error)

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._response is None:
            raise ProtocolError("a second response to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        if response is not None:
            response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if status < 200:  # an informational response: the real one follows
            response._raw_headers = []
            return
        response.status = status
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._response._chunks.append(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        if not self._headers_done:  # the end of an informational response
            return
        response._complete = True
        response._conn = None
        self._finished = True
        self._keep_alive = self._parser.should_keep_alive()
        self._response = None

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


class Pool:
    """The connections to one origin: at most ``limit`` open, idle ones reused newest
    first and closed after ``keepalive`` seconds."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self._ssl = (ssl_context or default_ssl_context()) if scheme == "https" else None
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle: deque[Connection] = deque()
        self._open: set[Connection] = set()
        self._busy = 0  # connections checked out or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(self, data: bytes) -> Response:
        """Send ``data`` (a whole request) and return once the status and headers are in."""
        for attempt in range(2):
            conn, reused = await self._acquire()
            response = Response(conn)
            conn.start(data, response)
            try:
                while not response.status:
                    await response._wait()
            except ConnectionClosed:
                if reused and attempt == 0 and not conn.received:
                    continue  # the upstream closed the idle connection as we sent
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acquire(self) -> tuple[Connection, bool]:
        if self._closed:
            raise ConnectionClosed("the client is closed")
        if self._busy >= self._limit:
            await self._wait_for_slot()
        else:
            self._busy += 1
        idle = self._idle
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.reusable and now - conn.idle_since < self._keepalive:
                conn.checked_out = True
                return conn, True
            conn.close()
        try:
            conn = await self._connect()
        except BaseException:
            self._free_slot()
            raise
        conn.checked_out = True
        return conn, False

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._free_slot()  # the slot was handed over as this task was cancelled
            else:
                waiter.cancel()
            raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(
                lambda: Connection(self, loop),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
        self._open.add(conn)
        return conn

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        self._busy -= 1

    def checked_in(self, conn: Connection) -> None:
        """``conn`` ended its request (it may be closed, or about to be kept)."""
        self._free_slot()

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)

    def keep(self, conn: Connection) -> bool:
        """Put a connection whose response ended back for reuse; False: close it."""
        if self._closed or not conn.reusable:
            return False
        if conn.paused:
            conn.resume()
        now = conn.loop.time()
        conn.idle_since = now
        idle = self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self._keepalive):
            idle.popleft().close()
        idle.append(conn)
        return True

    def close(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionClosed("the client is closed"))


class Client:
    """Pools per origin, with the same limits and timeouts for each."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], Pool] = {}

    def pool(self, scheme: str, host: str, port: int) -> Pool:
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = Pool(
                scheme,
                host,
                port,
                limit=self._limit,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                keepalive=self._keepalive,
                ssl_context=self._ssl,
            )
            self._pools[key] = pool
        return pool

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """One request to an absolute URL; returns once the status and headers are in."""
        scheme, host, port, host_header, target = split_url(url)
        lines = [("Host", host_header), *(headers or {}).items()]
        data = request_bytes(method, target, encode_headers(lines), body)
        return await self.pool(scheme, host, port).request(data)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def request_bytes(method: str, target: str, head: bytes, body: bytes | None) -> bytes:
    """A whole request: request line, the encoded header lines ``head``, framing, body."""
    start = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    if body is None:
        return b"".join((start, head, b"\r\n"))
    return b"".join((start, head, b"Content-Length: %d\r\n\r\n" % len(body), body))
