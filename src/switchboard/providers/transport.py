"""What every adapter shares to reach its upstream: the HTTP client (`http1`) set up from the
provider's config (pooled keep-alive connections, its timeouts, its headers), and the one
place where transport failures and upstream statuses become Switchboard errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import orjson

from switchboard.config import ProviderConfig
from switchboard.errors import (
    CONTEXT_WINDOW,
    InvalidRequest,
    RateLimited,
    SwitchboardError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard.providers.base import JSON
from switchboard.providers.http1 import Client, Response, encode_headers, request_bytes, split_url

_MAX_ERROR_BODY = 64 * 1024
# How OpenAI, vLLM, Anthropic, Bedrock and Ollama word "the prompt is too long".
_CONTEXT = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|prompt is too long"
    r"|input is too long|exceeds? the (?:model'?s? )?(?:maximum|max)",
    re.IGNORECASE,
)


def default_headers(
    config: ProviderConfig, auth_headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What every request to the provider carries. ``auth_headers`` replace the default
    ``Authorization: Bearer <api_key>`` for upstreams that authenticate another way
    (Anthropic's ``x-api-key``)."""
    headers = {"Content-Type": "application/json", **config.headers}
    if auth_headers is not None:
        headers.update(auth_headers)
    elif config.api_key is not None:
        headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    return headers


def merge_headers(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """``base`` with ``overrides`` on top, names compared without regard to case."""
    taken = {name.lower() for name in overrides}
    return {**{k: v for k, v in base.items() if k.lower() not in taken}, **overrides}


def new_client(config: ProviderConfig) -> Client:
    return Client(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_connections=config.max_connections,
    )


class Upstream:
    """One provider's base URL and connections; every request goes through `request`. The
    header lines are encoded once, so a request costs one join and one write."""

    def __init__(
        self, config: ProviderConfig, auth_headers: Mapping[str, str] | None = None
    ) -> None:
        self.name = config.name
        self.base_url = config.base_url
        self.client = new_client(config)
        scheme, host, port, host_header, prefix = split_url(config.base_url)
        self._pool = self.client.pool(scheme, host, port)
        self._prefix = prefix.rstrip("/")
        headers = default_headers(config, auth_headers)
        self._head = encode_headers([("Host", host_header), *headers.items()])

    async def request(self, method: str, path: str, body: JSON | None = None) -> Response:
        """Send and return the response once its status is 2xx; raise a mapped error else."""
        data = orjson.dumps(body) if body is not None else None
        return await send(
            self.name,
            self._pool.request(request_bytes(method, self._prefix + path, self._head, data)),
        )

    async def json(self, method: str, path: str, body: JSON | None = None) -> JSON:
        return await read_json(self.name, await self.request(method, path, body))

    async def aclose(self) -> None:
        await self.client.aclose()


async def send(
    provider: str,
    request: Coroutine[Any, Any, Response],
    *,
    status_of: Callable[[Response], int] | None = None,
) -> Response:
    """Await a request sent with the client (`Pool.request`, `Client.request`); return the
    response once its status is 2xx, raise a mapped error else. ``status_of`` lets a
    protocol say which status an error really is (Bedrock names its errors in a header)."""
    try:
        resp = await request
    except TimeoutError as exc:
        raise UpstreamTimeout(f"provider {provider!r} did not answer in time") from exc
    except OSError as exc:
        raise UpstreamUnavailable(f"provider {provider!r} unreachable: {exc}") from exc
    if resp.status >= 300:
        try:
            raw = await resp.read(_MAX_ERROR_BODY)
        except OSError:  # a timeout included
            raw = b""
        finally:
            resp.release()
        status = status_of(resp) if status_of is not None else resp.status
        raise status_error(provider, status, raw, resp.header("Retry-After"))
    return resp


async def read_json(provider: str, resp: Response) -> JSON:
    """The JSON object of a 2xx response, read whole; the response is released either way."""
    try:
        data = orjson.loads(await resp.read())
    except TimeoutError as exc:
        raise UpstreamTimeout(f"provider {provider!r} stopped answering") from exc
    except OSError as exc:
        raise UpstreamUnavailable(f"provider {provider!r} broke off: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"provider {provider!r} sent invalid JSON") from exc
    finally:
        resp.release()
    if not isinstance(data, dict):
        raise UpstreamUnavailable(f"provider {provider!r} sent an unexpected reply")
    return data


def status_error(
    provider: str, status: int, raw: bytes, retry_after: str | None
) -> SwitchboardError:
    message = upstream_message(raw)
    if status == 429:
        return RateLimited(
            f"provider {provider!r} is rate limiting: {message}",
            retry_after=_seconds(retry_after),
            code="upstream_rate_limited",
        )
    if status in (400, 413, 422):
        code = CONTEXT_WINDOW if _CONTEXT.search(message) else "upstream_bad_request"
        return InvalidRequest(f"provider {provider!r} rejected the request: {message}", code=code)
    if status in (401, 403, 404):
        # The upstream's words may quote our credentials; say only what the operator must fix.
        reason = (
            f"does not know this model: {message}"
            if status == 404
            else "refused the gateway's credentials"
        )
        return UpstreamRejected(f"provider {provider!r} {reason}")
    if status in (408, 504):
        return UpstreamTimeout(f"provider {provider!r} timed out ({status})")
    if status in (503, 529):
        return UpstreamOverloaded(
            f"provider {provider!r} is overloaded ({status}): {message}",
            retry_after=_seconds(retry_after),
        )
    return UpstreamUnavailable(f"provider {provider!r} failed with {status}: {message}")


def upstream_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace").strip() or "no details"
    if isinstance(data, dict):
        err = data.get("error", data.get("message"))
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str):
            return err[:500]
    return "no details"


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class ResponseStream:
    """A `ChunkStream` over one upstream response: ``decode`` turns each read into chunks."""

    def __init__(
        self,
        provider: str,
        resp: Response,
        decode: Callable[[list[bytes]], list[JSON]],
    ) -> None:
        self._provider = provider
        self._resp = resp
        self._decode = decode

    def __aiter__(self) -> AsyncIterator[list[JSON]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[JSON]]:
        buffer = b""
        try:
            async for data in self._resp.iter_chunks():
                buffer += data
                if b"\n" not in data:
                    continue
                *lines, buffer = buffer.split(b"\n")
                chunks = self._decode(lines)
                if chunks:
                    yield chunks
            if buffer.strip():
                chunks = self._decode([buffer])
                if chunks:
                    yield chunks
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self._provider!r} stalled mid-stream") from exc
        except OSError as exc:
            raise UpstreamUnavailable(
                f"provider {self._provider!r} broke off the stream: {exc}"
            ) from exc
        self._resp.release()

    async def aclose(self) -> None:
        # After a full read the connection went back to the pool; otherwise drop it so the
        # upstream stops generating for a client that is gone.
        self._resp.close()


def loads_line(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable("provider sent a malformed stream line") from exc
