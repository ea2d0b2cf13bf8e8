"""Upstream adapters, one module per wire protocol, all behind `Provider`.

Each kind of provider in the config names its adapter class here; a module is imported only
when a provider of its kind is configured.
"""

from __future__ import annotations

from importlib import import_module

from switchboard.config import ProviderConfig
from switchboard.providers.base import ChunkStream, Provider

ADAPTERS: dict[str, str] = {
    "openai": "switchboard.providers.openai_compat:OpenAICompatProvider",
    "ollama": "switchboard.providers.ollama:OllamaProvider",
    "anthropic": "switchboard.providers.anthropic:AnthropicProvider",
    "bedrock": "switchboard.providers.bedrock:BedrockProvider",
}


def build_provider(config: ProviderConfig) -> Provider:
    module, _, name = ADAPTERS[config.kind].partition(":")
    adapter: type[Provider] = getattr(import_module(module), name)
    return adapter(config)  # type: ignore[call-arg]


__all__ = ["ADAPTERS", "ChunkStream", "Provider", "build_provider"]
