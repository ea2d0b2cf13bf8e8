"""The one interface every upstream adapter implements.

The internal format is OpenAI's chat format: adapters take an OpenAI request body (with
``model`` already set to the upstream's model id) and return OpenAI-shaped responses and
chunks, translating to and from their upstream's wire format at this edge and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from switchboard.config import Locality

JSON = dict[str, Any]


class ChunkStream(Protocol):
    """OpenAI ``chat.completion.chunk`` dicts, in batches: each item holds the chunks decoded
    from one read of the upstream, so a burst goes to the client in one write. `aclose`
    releases (or, when the stream was not read to the end, aborts) the upstream request."""

    def __aiter__(self) -> AsyncIterator[list[JSON]]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str
    locality: Locality

    async def chat(self, body: JSON) -> JSON:
        """A complete ``chat.completion`` object."""
        ...

    async def stream_chat(self, body: JSON) -> ChunkStream:
        """Returns once the upstream has accepted the request; errors before that raise."""
        ...

    async def embed(self, body: JSON) -> JSON:
        """An OpenAI ``list`` of embeddings, honouring ``encoding_format``."""
        ...

    async def list_models(self) -> list[str]: ...

    async def aclose(self) -> None: ...
