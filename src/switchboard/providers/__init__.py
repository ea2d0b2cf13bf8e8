"""Upstream adapters, one per wire protocol, all behind `Provider`."""

from switchboard.config import ProviderConfig
from switchboard.providers.base import ChunkStream, Provider
from switchboard.providers.ollama import OllamaProvider
from switchboard.providers.openai_compat import OpenAICompatProvider

_KINDS: dict[str, type[OllamaProvider] | type[OpenAICompatProvider]] = {
    "ollama": OllamaProvider,
    "openai": OpenAICompatProvider,
}


def build_provider(config: ProviderConfig) -> Provider:
    return _KINDS[config.kind](config)


__all__ = ["ChunkStream", "Provider", "build_provider"]
