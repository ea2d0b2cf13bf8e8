"""Adapter for Amazon Bedrock's runtime API: Converse and ConverseStream for chat, InvokeModel
for Amazon Titan Text Embeddings; every request signed with SigV4 by botocore.

Credentials come from botocore's standard chain (environment variables, shared profile,
container credentials, IRSA web identity, instance metadata), resolved once off the event loop
and cached; each request takes ``get_frozen_credentials()``, so temporary credentials refresh
(a refresh that is due runs in a thread, as it may call STS). ``api_key`` is not accepted:
Bedrock is reached with AWS credentials only.

The model id (``anthropic.claude-...-v1:0``, an inference profile ``us.anthropic...``, an ARN)
goes into the path percent-encoded exactly as botocore does, and the URL is sent byte for byte
as it was signed. The event stream of ConverseStream is binary
(``application/vnd.amazon.eventstream``) and decoded with botocore's ``EventStreamBuffer``.

``list_models``: bedrock-runtime cannot list models; Bedrock's control plane can
(``GET /foundation-models``, signed for the same ``bedrock`` service). With the default
endpoint the adapter asks ``https://bedrock.{region}.amazonaws.com``; with a configured
``base_url`` (a VPC endpoint, a proxy, a test fake) it asks ``{base_url}/foundation-models``.
The list holds every foundation model of the region, including ones the account may only
reach through an inference profile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session
from botocore.utils import percent_encode

from switchboard.config import ProviderConfig
from switchboard.errors import (
    ConfigError,
    SwitchboardError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard.providers.base import JSON, ChunkStream
from switchboard.providers.bedrock_format import (
    BedrockStreamDecoder,
    error_status,
    from_converse,
    from_titan_embed,
    to_converse,
    to_titan_embed,
)
from switchboard.providers.http1 import Response
from switchboard.providers.transport import (
    default_headers,
    merge_headers,
    new_client,
    read_json,
    send,
)

SERVICE = "bedrock"  # the SigV4 signing name of both bedrock-runtime and the control plane
EMBED_CONCURRENCY = 8  # InvokeModel calls in flight for one embeddings request


def model_path(model: str, action: str) -> str:
    """``/model/{modelId}/{action}`` with the id encoded as botocore encodes URI labels."""
    return f"/model/{percent_encode(model)}/{action}"


def control_plane_url(config: ProviderConfig) -> str:
    default = f"https://bedrock-runtime.{config.region}.amazonaws.com"
    if config.base_url == default:
        return f"https://bedrock.{config.region}.amazonaws.com"
    return config.base_url


def _resolve_credentials() -> Any:
    """botocore's default credential chain; blocking (files, IMDS, STS): run it in a thread."""
    try:
        credentials = Session().get_credentials()
    except (BotoCoreError, ClientError) as exc:
        raise UpstreamRejected(f"AWS credentials could not be resolved: {exc}") from exc
    if credentials is None:
        raise UpstreamRejected(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a "
            "profile, or a role (container credentials, IRSA, instance profile)"
        )
    return credentials


class BedrockProvider:
    def __init__(self, config: ProviderConfig) -> None:
        if config.api_key is not None:
            raise ConfigError(
                f"provider {config.name!r}: bedrock authenticates with AWS credentials; "
                "remove api_key"
            )
        assert config.region is not None  # the config requires it for kind bedrock
        self.name = config.name
        self.locality = config.locality
        self._region = config.region
        self._base_url = config.base_url
        self._control_url = control_plane_url(config)
        self._client = new_client(config)
        self._headers = default_headers(config, auth_headers={})  # sent, not signed
        self._credentials: Any = None
        self._credentials_lock = asyncio.Lock()

    async def chat(self, body: JSON) -> JSON:
        path = model_path(body["model"], "converse")
        data = await self._json("POST", self._base_url + path, to_converse(body))
        return from_converse(data, body["model"])

    async def stream_chat(self, body: JSON) -> ChunkStream:
        path = model_path(body["model"], "converse-stream")
        resp = await self._request("POST", self._base_url + path, to_converse(body))
        return EventChunkStream(self.name, resp, BedrockStreamDecoder(body["model"], self.name))

    async def embed(self, body: JSON) -> JSON:
        requests = to_titan_embed(body)
        url = self._base_url + model_path(body["model"], "invoke")
        limit = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def invoke(request: JSON) -> JSON:
            async with limit:
                return await self._json("POST", url, request, accept="application/json")

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(invoke(request)) for request in requests]
        except BaseExceptionGroup as failed:  # the first failure; the others were cancelled
            raise failed.exceptions[0] from None
        return from_titan_embed(
            [t.result() for t in tasks], body["model"], body.get("encoding_format")
        )

    async def list_models(self) -> list[str]:
        data = await self._json("GET", self._control_url + "/foundation-models")
        summaries = data.get("modelSummaries") or []
        return [m["modelId"] for m in summaries if isinstance(m, dict) and "modelId" in m]

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- signing and sending ----------------------------------------------------------

    async def _frozen_credentials(self) -> Any:
        if self._credentials is None:
            async with self._credentials_lock:
                if self._credentials is None:
                    self._credentials = await asyncio.to_thread(_resolve_credentials)
        credentials = self._credentials
        try:
            refresh_needed = getattr(credentials, "refresh_needed", None)
            if refresh_needed is not None and refresh_needed():
                return await asyncio.to_thread(credentials.get_frozen_credentials)
            return credentials.get_frozen_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise UpstreamRejected(
                f"provider {self.name!r} could not refresh its AWS credentials: {exc}"
            ) from exc

    async def _signed_headers(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(await self._frozen_credentials(), SERVICE, self._region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}

    async def _request(
        self, method: str, url: str, body: JSON | None = None, *, accept: str | None = None
    ) -> Response:
        """Sign and send; return the response once its status is 2xx, raise a mapped error
        else (by ``x-amzn-ErrorType`` first, then by status)."""
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        headers = await self._signed_headers(method, url, data, headers)
        return await send(
            self.name,
            # The URL goes out byte for byte (%3A in model ids stays as signed).
            self._client.request(
                method, url, headers=merge_headers(self._headers, headers), body=data
            ),
            status_of=lambda r: error_status(r.header("x-amzn-ErrorType"), r.status),
        )

    async def _json(
        self, method: str, url: str, body: JSON | None = None, *, accept: str | None = None
    ) -> JSON:
        return await read_json(self.name, await self._request(method, url, body, accept=accept))


class EventChunkStream:
    """A `ChunkStream` over a binary AWS event stream: one batch of chunks per read."""

    def __init__(self, provider: str, resp: Response, decode: BedrockStreamDecoder) -> None:
        self._provider = provider
        self._resp = resp
        self._decode = decode

    def __aiter__(self) -> AsyncIterator[list[JSON]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[JSON]]:
        buffer = EventStreamBuffer()
        try:
            async for data in self._resp.iter_chunks():
                buffer.add_data(data)
                chunks, failure = self._drain(buffer)
                if chunks:
                    yield chunks
                if failure is not None:
                    raise failure
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self._provider!r} stalled mid-stream") from exc
        except OSError as exc:
            raise UpstreamUnavailable(
                f"provider {self._provider!r} broke off the stream: {exc}"
            ) from exc
        if not self._decode.done:
            raise UpstreamUnavailable(
                f"provider {self._provider!r} broke off the stream before its end"
            )
        self._resp.release()

    def _drain(self, buffer: EventStreamBuffer) -> tuple[list[JSON], SwitchboardError | None]:
        """The chunks of every complete message in ``buffer``, and the error that stopped
        the stream if one did: what came before an exception event still reaches the client
        (and the meter)."""
        chunks: list[JSON] = []
        try:
            for message in buffer:
                chunks.extend(self._decode(message.headers, message.payload))
        except SwitchboardError as exc:
            return chunks, exc
        except ParserError as exc:
            failure = UpstreamUnavailable(
                f"provider {self._provider!r} sent a malformed event stream: {exc}"
            )
            failure.__cause__ = exc
            return chunks, failure
        return chunks, None

    async def aclose(self) -> None:
        # After a full read the connection went back to the pool; otherwise drop it so the
        # upstream stops generating for a client that is gone.
        self._resp.close()
