"""Process settings, read from the environment (``SWITCHBOARD_*``) in this one place.

Everything an operator sets per deployment (where the database is, which port, the admin key)
lives here; what the gateway routes to (providers, models, prices) lives in the YAML file that
`switchboard.config` loads. Every field is documented in docs/configuration.md, and a test
fails when one is not.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "switchboard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory for embedded state: the SQLite database when no "
        "database URL is set.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db. "
        "Default: a SQLite file in the data directory.",
    )
    config: Path | None = Field(
        default=None,
        description="Path of the YAML gateway config (providers, models, prices). Default: "
        "./switchboard.yaml when it exists, else a local Ollama at 127.0.0.1:11434.",
    )
    host: str = Field(default="127.0.0.1", description="Address `switchboard serve` binds.")
    port: int = Field(default=8080, description="Port `switchboard serve` listens on.")
    workers: int = Field(default=1, ge=1, description="Gateway worker processes.")
    admin_key: SecretStr | None = Field(
        default=None,
        description="Platform admin key for /admin/v1. When unset, one is generated at first "
        "start, printed once, and stored hashed.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs session access tokens (HS256; at least 32 characters). "
        "When unset, a random one is generated at first start and kept in the database.",
    )
    access_token_ttl_seconds: int = Field(
        default=900,
        ge=10,
        le=86_400,
        description="Lifetime of a session access token (a JWT); refresh it before it ends.",
    )
    session_idle_timeout_seconds: int = Field(
        default=3600,
        ge=60,
        description="A session not refreshed for this long is over; the user signs in again.",
    )
    session_max_age_seconds: int = Field(
        default=12 * 3600,
        ge=60,
        description="Absolute lifetime of a session, however active it is.",
    )
    session_check_ttl_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long a worker trusts a session it has seen alive. A logout, a reused "
        "refresh token, a disabled user or a session ended from a session list stops the "
        "session's access tokens on every worker within this time (at once on the worker that "
        "handled it).",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed sign-ins allowed per tenant, e-mail (or LDAP user) and client "
        "address within the lockout window before that combination is refused with 429.",
    )
    login_max_account_failures: int = Field(
        default=25,
        ge=1,
        description="Failed sign-ins allowed per tenant and e-mail (or LDAP user) from all "
        "client addresses together within the lockout window before every sign-in to that "
        "account is refused with 429; slows an attack spread over many addresses. Keep it "
        "several times SWITCHBOARD_LOGIN_MAX_FAILURES.",
    )
    login_lockout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="The window failed sign-ins are counted in, and how long a lockout lasts.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s), comma-separated, newest first, that encrypt stored "
        "secrets (OIDC client secrets, LDAP bind passwords). Unset: a key is generated once "
        "into <data dir>/secret.key (mode 0600). Back it up apart from the database.",
    )
    public_url: str | None = Field(
        default=None,
        description="The gateway's external base URL (https://ai.example.com), used to build "
        "OIDC redirect URIs. Unset: taken from each request's Host header.",
    )
    key_cache_ttl_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long a looked-up API key is trusted without asking the database. "
        "A revoked key stops working on every worker within this time.",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger ones get 413.",
    )
    usage_flush_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often buffered usage events are written to the database.",
    )
    usage_batch_size: int = Field(
        default=500, ge=1, description="Most usage events written in one database batch."
    )
    usage_buffer_limit: int = Field(
        default=200_000,
        ge=1000,
        description="Most usage events held in memory while the database is unreachable.",
    )
    usage_wal: bool = Field(
        default=True,
        description="Append each usage event to a local write-ahead log (data_dir/usage-wal) "
        "before it is buffered, so a hard kill loses none; replayed at start.",
    )
    usage_wal_sync_interval_seconds: float = Field(
        default=0.05,
        gt=0,
        description="How often the usage write-ahead log is fsynced (bounds what a power loss "
        "can take).",
    )
    usage_wal_segment_bytes: int = Field(
        default=4 << 20,
        ge=4096,
        description="Disk space reserved for each usage write-ahead log segment (a memory map); "
        "a full one rolls over to the next. Sealed segments are cut to their events.",
    )
    lago_url: str | None = Field(
        default=None,
        description="Base URL of the Lago API (e.g. https://api.getlago.com). When set, usage "
        "events are exported to Lago's /api/v1/events/batch; unset, nothing is exported.",
    )
    lago_api_key: SecretStr | None = Field(
        default=None, description="Lago API key, sent as 'Authorization: Bearer <key>'."
    )
    lago_metric_code: str = Field(
        default="llm_usage",
        description="Code of the Lago billable metric every exported usage event carries.",
    )
    export_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the Lago exporter looks for usage events to send when idle.",
    )
    export_batch_size: int = Field(
        default=100,
        ge=1,
        le=100,
        description="Most usage events sent to Lago in one request (Lago accepts at most 100).",
    )
    export_in_server: bool = Field(
        default=True,
        description="Run the Lago exporter inside the gateway process (every worker, safely in "
        "parallel) when SWITCHBOARD_LAGO_URL is set. Turn it off when a separate "
        "`switchboard export-worker` does the export.",
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
    limits_url: str | None = Field(
        default=None,
        description="Redis URL for rate limits shared by every replica (redis://host:6379/0). "
        "Unset: limits are counted in each worker process.",
    )
    limits_lease_seconds: float = Field(
        default=900,
        gt=0,
        description="How long a concurrency slot is held at most if its worker dies; must exceed "
        "the longest request.",
    )
    budget_default_max_tokens: int = Field(
        default=4096,
        ge=1,
        description="Completion tokens a budget reserves for a request that sets no max_tokens.",
    )
    budget_webhook_url: str | None = Field(
        default=None,
        description="URL that receives every budget alert (threshold crossed, budget exceeded) "
        "as a JSON POST, for every tenant.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token GET /metrics requires; unset, /metrics is open.",
    )
    cache_url: str | None = Field(
        default=None,
        description="Redis URL for the response cache, shared by every replica "
        "(redis://host:6379/0). Unset: an in-process cache per worker.",
    )
    cache_max_entries: int = Field(
        default=10_000, ge=1, description="Most entries the in-process response cache holds."
    )
    cache_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Most bytes of keys and answers the in-process response cache holds.",
    )
    access_log: bool = Field(
        default=False, description="Log one line per HTTP request (costs throughput)."
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'switchboard.db'}"

    def resolved_config_path(self) -> Path | None:
        if self.config is not None:
            return self.config
        default = Path("switchboard.yaml")
        return default if default.exists() else None
