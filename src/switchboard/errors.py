"""Switchboard's one exception tree.

Every error the gateway raises on purpose is a `SwitchboardError`. Each class carries the HTTP
status and the machine-readable `type`/`code` a client sees; each inbound surface renders the
tree once, in its own protocol's error shape (OpenAI's error object on `/v1`, a plain JSON body
on `/admin`). Provider adapters map their transport and HTTP failures into the tree at the edge
with ``raise ... from exc``.

    SwitchboardError
    ├── ConfigError                      the YAML or the environment is wrong (start-up only)
    ├── ClientError                      the caller can fix it                    4xx
    │   ├── InvalidRequest               malformed JSON, missing field, bad type  400
    │   ├── AuthenticationFailed         missing, unknown, expired, revoked key   401
    │   ├── PermissionDenied             key valid, action not allowed            403
    │   ├── NotFound                     unknown model, tenant, key               404
    │   ├── PayloadTooLarge              body over the configured limit           413
    │   └── RateLimited                  slow down (upstream or our own limits)   429
    │       └── BudgetExceeded           the monthly budget is spent              429
    └── UpstreamError                    the model provider failed                5xx
        ├── UpstreamUnavailable          connect refused, reset, bad reply        502
        │   └── UpstreamOverloaded       the provider is overloaded (503, 529)    503
        ├── UpstreamRejected             the provider refused our request         502
        └── UpstreamTimeout              connect or read timed out                504
"""

from __future__ import annotations

CONTEXT_WINDOW = "context_length_exceeded"  # the code of a 400 for a prompt too long


class SwitchboardError(Exception):
    """Root of every error Switchboard raises deliberately."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None  # seconds; sent as Retry-After when set

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ConfigError(SwitchboardError):
    """The configuration file or environment is invalid; raised before serving."""


class ClientError(SwitchboardError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    status_code = 400


class AuthenticationFailed(ClientError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFound(ClientError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(ClientError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.headers: list[tuple[bytes, bytes]] = []  # e.g. x-ratelimit-* from our limits


class BudgetExceeded(RateLimited):
    """A monthly budget (tenant, key or user) cannot cover the request's worst-case cost.
    Shaped like OpenAI's own quota error (429, ``insufficient_quota``), code ``budget_exceeded``."""

    error_type = "insufficient_quota"
    code = "budget_exceeded"


class UpstreamError(SwitchboardError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamOverloaded(UpstreamUnavailable):
    """The provider said it is overloaded (503, Anthropic's 529, Bedrock's
    ServiceUnavailableException): retried and failed over like any unavailable upstream, and
    answered with 503 and the provider's Retry-After, so clients back off and retry."""

    status_code = 503
    code = "upstream_overloaded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRejected(UpstreamError):
    code = "upstream_rejected"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"
