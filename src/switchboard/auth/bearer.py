"""Reading a credential out of request headers."""

from __future__ import annotations

from switchboard.errors import AuthenticationFailed


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
    return token
