"""Adapter for any OpenAI-compatible server: OpenAI itself, vLLM, TGI, LM Studio, llama.cpp."""

from __future__ import annotations

from switchboard.config import ProviderConfig
from switchboard.errors import UpstreamUnavailable
from switchboard.providers.base import JSON, ChunkStream
from switchboard.providers.transport import ResponseStream, Upstream, loads_line, upstream_message


class OpenAICompatProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.locality = config.locality
        self._upstream = Upstream(config)

    async def chat(self, body: JSON) -> JSON:
        return await self._upstream.json("POST", "/chat/completions", body)

    async def stream_chat(self, body: JSON) -> ChunkStream:
        # Always ask for usage so metering never has to guess; the gateway hides the extra
        # usage chunk from clients that did not ask for it.
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        resp = await self._upstream.request(
            "POST", "/chat/completions", {**body, "stream": True, "stream_options": options}
        )
        return ResponseStream(self.name, resp, decode_sse)

    async def embed(self, body: JSON) -> JSON:
        return await self._upstream.json("POST", "/embeddings", body)

    async def list_models(self) -> list[str]:
        data = await self._upstream.json("GET", "/models")
        return [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m]

    async def aclose(self) -> None:
        await self._upstream.aclose()


def decode_sse(lines: list[bytes]) -> list[JSON]:
    """``data:`` lines of an OpenAI event stream to chunk dicts; `[DONE]` and comments dropped."""
    chunks: list[JSON] = []
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]" or not payload:
            continue
        chunk = loads_line(payload)
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk and "choices" not in chunk:
            raise UpstreamUnavailable(f"provider error mid-stream: {upstream_message(payload)}")
        chunks.append(chunk)
    return chunks
