"""Run an ASGI app under uvicorn in a background thread, bound to 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp

_POLL_INTERVAL = 0.01


class ServerThread:
    """Context manager serving ``app`` on an ephemeral 127.0.0.1 port.

    >>> with ServerThread(app) as server:
    ...     httpx.get(server.url + "/")
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        http: type[asyncio.Protocol] | str = "auto",
    ) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            # Let records propagate to the root logger (pytest captures them)
            # instead of installing uvicorn's own stderr handlers.
            log_config=None,
            lifespan="auto",
            loop="asyncio",
            ws="none",
            http=http,
            # Backstop so stop() stays bounded even if a handler is stalled.
            timeout_graceful_shutdown=2,
        )
        self.app: Any = app  # a Starlette app or the gateway; tests read its .state
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._error: BaseException | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited during startup") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {self._startup_timeout} s")
            time.sleep(_POLL_INTERVAL)
        self._port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(self._shutdown_timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"uvicorn did not stop within {self._shutdown_timeout} s")
        self._port = None
        if self._error is not None:
            raise RuntimeError("uvicorn failed") from self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # surfaced by start() / stop()
            self._error = exc
