"""Adapter for Anthropic's Messages API (``/v1/messages``, ``/v1/models``)."""

from __future__ import annotations

from urllib.parse import quote

from switchboard.config import ProviderConfig
from switchboard.errors import InvalidRequest
from switchboard.providers.anthropic_format import from_anthropic_message, to_anthropic_request
from switchboard.providers.anthropic_stream import AnthropicStreamDecoder
from switchboard.providers.base import JSON, ChunkStream
from switchboard.providers.transport import ResponseStream, Upstream

_MAX_MODEL_PAGES = 20


class AnthropicProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.locality = config.locality
        auth = {"anthropic-version": config.anthropic_version}
        if config.api_key is not None:
            auth["x-api-key"] = config.api_key.get_secret_value()
        self._upstream = Upstream(config, auth_headers=auth)

    async def chat(self, body: JSON) -> JSON:
        request = to_anthropic_request(body, stream=False)
        data = await self._upstream.json("POST", "/v1/messages", request)
        return from_anthropic_message(data, body["model"])

    async def stream_chat(self, body: JSON) -> ChunkStream:
        request = to_anthropic_request(body, stream=True)
        resp = await self._upstream.request("POST", "/v1/messages", request)
        return ResponseStream(self.name, resp, AnthropicStreamDecoder(body["model"]))

    async def embed(self, body: JSON) -> JSON:
        raise InvalidRequest(
            f"provider {self.name!r} is Anthropic, which has no embeddings API", param="model"
        )

    async def list_models(self) -> list[str]:
        names: list[str] = []
        path = "/v1/models?limit=1000"
        for _ in range(_MAX_MODEL_PAGES):
            data = await self._upstream.json("GET", path)
            page = [m for m in data.get("data") or [] if isinstance(m, dict) and "id" in m]
            names += [m["id"] for m in page]
            if not data.get("has_more") or not page:
                break
            after = quote(str(data.get("last_id") or page[-1]["id"]))
            path = f"/v1/models?limit=1000&after_id={after}"
        return names

    async def aclose(self) -> None:
        await self._upstream.aclose()
