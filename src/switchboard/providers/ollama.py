"""Adapter for Ollama's native API (``/api/chat``, ``/api/embed``, ``/api/tags``)."""

from __future__ import annotations

from switchboard.config import ProviderConfig
from switchboard.providers.base import JSON, ChunkStream
from switchboard.providers.ollama_format import (
    OllamaStreamDecoder,
    from_ollama_chat,
    from_ollama_embed,
    to_ollama_chat,
    to_ollama_embed,
)
from switchboard.providers.transport import ResponseStream, Upstream


class OllamaProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.locality = config.locality
        self._upstream = Upstream(config)

    async def chat(self, body: JSON) -> JSON:
        data = await self._upstream.json("POST", "/api/chat", to_ollama_chat(body, stream=False))
        return from_ollama_chat(data, body["model"])

    async def stream_chat(self, body: JSON) -> ChunkStream:
        resp = await self._upstream.request("POST", "/api/chat", to_ollama_chat(body, stream=True))
        return ResponseStream(self.name, resp, OllamaStreamDecoder(body["model"]))

    async def embed(self, body: JSON) -> JSON:
        data = await self._upstream.json("POST", "/api/embed", to_ollama_embed(body))
        return from_ollama_embed(data, body["model"], body.get("encoding_format"))

    async def list_models(self) -> list[str]:
        data = await self._upstream.json("GET", "/api/tags")
        return [m["name"] for m in data.get("models", []) if isinstance(m, dict) and "name" in m]

    async def aclose(self) -> None:
        await self._upstream.aclose()
