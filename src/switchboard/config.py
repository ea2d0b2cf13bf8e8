"""The gateway config file: which providers exist and which model names route where.

    providers:
      - name: local-ollama
        kind: ollama              # ollama | openai (any OpenAI-compatible server)
        base_url: http://127.0.0.1:11434
        locality: local           # local | external
    models:
      - name: llama3              # the name clients ask for
        deployments:
          - {provider: local-ollama, model: "llama3.1:8b"}

``${VAR}`` and ``${VAR:-default}`` inside any string are replaced from the environment. Any
mistake is reported as a `ConfigError` naming the field and its line, before anything serves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from switchboard.errors import ConfigError

Locality = Literal["local", "external"]
ProviderKind = Literal["openai", "ollama", "anthropic", "bedrock"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per one million tokens; one version of a model's price (see metering/prices.yaml).

    Input tokens include cache reads and writes: those are priced at ``cached_input_per_1m`` and
    ``cache_write_per_1m`` when given, else at the input price. Embedding requests are priced at
    ``embeddings_per_1m`` when given, else at the input price. ``effective_from`` (a date, 00:00
    UTC) makes this a dated version; an undated price is in force for all time.
    """

    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)
    cached_input_per_1m: float | None = Field(default=None, ge=0)
    cache_write_per_1m: float | None = Field(default=None, ge=0)
    embeddings_per_1m: float | None = Field(default=None, ge=0)
    effective_from: date | None = None


class ProviderConfig(_Strict):
    name: str = Field(pattern=_NAME)
    kind: ProviderKind
    base_url: str = Field(
        default="", description="Root URL of the upstream API; Bedrock derives it from region."
    )
    locality: Locality
    api_key: SecretStr | None = None
    region: str | None = Field(default=None, description="AWS region (kind: bedrock).")
    anthropic_version: str = Field(
        default="2023-06-01", description="anthropic-version header (kind: anthropic)."
    )
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(
        default=600.0, gt=0, description="Longest wait for the next byte from the upstream."
    )
    first_byte_timeout: float | None = Field(
        default=None, gt=0, description="Longest wait for the first response byte or chunk."
    )
    total_timeout: float | None = Field(
        default=None, gt=0, description="Longest a whole request, stream included, may take."
    )
    max_connections: int = Field(default=512, ge=1)
    discover_models: bool = Field(
        default=False,
        description="Expose every model the upstream lists under its own name.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _endpoint(self) -> ProviderConfig:
        if self.kind == "bedrock":
            if not self.region:
                raise ValueError("a bedrock provider needs region")
            if not self.base_url:
                url = f"https://bedrock-runtime.{self.region}.amazonaws.com"
                object.__setattr__(self, "base_url", url)
        elif not self.base_url:
            raise ValueError(f"a {self.kind} provider needs base_url")
        return self


class DeploymentConfig(_Strict):
    provider: str
    model: str = Field(min_length=1)
    price: Price | None = None
    weight: float = Field(default=1.0, gt=0, description="Share of traffic (strategy weighted).")


class ModelConfig(_Strict):
    name: str = Field(pattern=_NAME)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    strategy: Literal["weighted", "least_busy"] = Field(
        default="weighted",
        description="weighted: random by weight; least_busy: fewest requests in flight.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Other model names to try, in order, when every deployment failed.",
    )
    fallback_on_context_window: bool = Field(
        default=False, description="Also fall back when the prompt is too long for this model."
    )


class BreakerConfig(_Strict):
    failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open a deployment's breaker."
    )
    failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Failure share over the window that opens it."
    )
    window: int = Field(default=20, ge=2, description="Outcomes the failure rate looks at.")
    cooldown_seconds: float = Field(
        default=30.0, gt=0, description="Open time before one probe request is let through."
    )


class RouterConfig(_Strict):
    retries: int = Field(
        default=2, ge=0, le=10, description="Extra attempts after a retryable failure."
    )
    backoff_base_seconds: float = Field(default=0.2, ge=0)
    backoff_max_seconds: float = Field(default=5.0, ge=0)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)


class GatewayConfig(_Strict):
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    prices: dict[str, Price | list[Price]] = Field(
        default_factory=dict,
        description="Price overrides keyed by upstream model id: one price, or dated versions.",
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    source: str = Field(default="<built-in defaults>", exclude=True)


def default_config() -> GatewayConfig:
    """What a laptop gets with no config file: the local Ollama, every model it has."""
    return GatewayConfig(
        providers=[
            ProviderConfig(
                name="ollama",
                kind="ollama",
                base_url="http://127.0.0.1:11434",
                locality="local",
                discover_models=True,
            )
        ]
    )


def load_config(path: Path | None) -> GatewayConfig:
    if path is None:
        return default_config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> GatewayConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if root is None:
        return GatewayConfig(source=source)
    _expand_env(root, source)
    data = yaml.SafeLoader("").construct_document(root)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: line {root.start_mark.line + 1}: expected a mapping")
    try:
        config = GatewayConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _located(source, root, first["loc"], first["msg"]) from exc
    _check_references(config, root)
    _check_fallbacks(config, root)
    return config


def _check_references(config: GatewayConfig, root: yaml.Node) -> None:
    seen: set[str] = set()
    for i, provider in enumerate(config.providers):
        if provider.name in seen:
            raise _located(config.source, root, ("providers", i, "name"), "duplicate provider")
        seen.add(provider.name)
    models: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in models:
            raise _located(config.source, root, ("models", i, "name"), "duplicate model name")
        models.add(model.name)
        for j, fallback in enumerate(model.fallbacks):
            if fallback == model.name:
                raise _located(
                    config.source,
                    root,
                    ("models", i, "fallbacks", j),
                    "a model cannot fall back to itself",
                )
        for j, deployment in enumerate(model.deployments):
            if deployment.provider not in seen:
                raise _located(
                    config.source,
                    root,
                    ("models", i, "deployments", j, "provider"),
                    f"no provider named {deployment.provider!r}",
                )


def _check_fallbacks(config: GatewayConfig, root: yaml.Node) -> None:
    names = {m.name for m in config.models}
    for i, model in enumerate(config.models):
        for j, fallback in enumerate(model.fallbacks):
            if fallback not in names:
                loc = ("models", i, "fallbacks", j)
                raise _located(config.source, root, loc, f"no model named {fallback!r}")


def _expand_env(node: yaml.Node, source: str) -> None:
    if isinstance(node, yaml.ScalarNode):
        if isinstance(node.value, str) and "${" in node.value:
            node.value = _ENV_REF.sub(lambda m: _env_value(m, node, source), node.value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _expand_env(item, source)
    elif isinstance(node, yaml.MappingNode):
        for _key, value in node.value:
            _expand_env(value, source)


def _env_value(match: re.Match[str], node: yaml.Node, source: str) -> str:
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is None:
        if default is not None:
            return default
        line = node.start_mark.line + 1
        raise ConfigError(f"{source}: line {line}: environment variable {name} is not set")
    return value


def _located(source: str, root: yaml.Node, loc: Sequence[Any], message: str) -> ConfigError:
    node = root
    for i, part in enumerate(loc):
        child = _child(node, part, key=i == len(loc) - 1)
        if child is None:
            break
        node = child
    field = ".".join(str(p) for p in loc) or "<root>"
    return ConfigError(f"{source}: line {node.start_mark.line + 1}: {field}: {message}")


def _child(node: yaml.Node, part: Any, *, key: bool = False) -> yaml.Node | None:
    """The node at ``part``; for the last step into a mapping, its key (where the field is)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if key_node.value == part:
                return key_node if key else value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None
