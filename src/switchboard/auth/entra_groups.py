"""Entra ID's group overage: a user in more groups than fit in a token (200 in a JWT) gets no
``groups`` claim. The ID token names a claim source instead::

    "_claim_names": {"groups": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/<tid>/users/<oid>/..."}}

(or ``"hasgroups": true`` from the implicit flow). The endpoint it names is the retired Azure AD
Graph, so the groups are read from Microsoft Graph instead, with the access token of the same
sign-in: ``POST {graph_url}/v1.0/me/getMemberGroups`` answers every group id the user is in,
transitively, up to 11,000. The app needs the delegated permission ``GroupMember.Read.All``
(admin consent) and must ask for it: ``https://graph.microsoft.com/GroupMember.Read.All`` among
the provider's scopes.

Without the groups the role mapping cannot be decided, so a sign-in whose groups cannot be read
is refused with what to fix, never mapped as if the user were in no group.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from switchboard.errors import AuthenticationFailed, UpstreamUnavailable

log = logging.getLogger("switchboard.auth.oidc")

GRAPH_URL = "https://graph.microsoft.com"
_GROUPS_SCOPE_HINT = (
    "grant the app the Microsoft Graph permission GroupMember.Read.All (admin consent) and add "
    "https://graph.microsoft.com/GroupMember.Read.All to the identity provider's scopes"
)


def has_overage(claims: dict[str, Any], groups_claim: str) -> bool:
    """True when the token says the user's groups did not fit in it."""
    names = claims.get("_claim_names")
    return (isinstance(names, dict) and groups_claim in names) or claims.get("hasgroups") is True


async def member_groups(
    http: httpx.AsyncClient, graph_url: str, access_token: object, wait_seconds: float
) -> list[str]:
    """Every group id the signed-in user is in, from Microsoft Graph."""
    if not isinstance(access_token, str) or not access_token:
        raise AuthenticationFailed(
            "your account is in too many groups to fit in the sign-in token, and the identity "
            "provider gave no access token to look them up",
            code="oidc_groups_unavailable",
        )
    try:
        response = await http.post(
            f"{graph_url.rstrip('/')}/v1.0/me/getMemberGroups",
            json={"securityEnabledOnly": False},
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=wait_seconds,
        )
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable("Microsoft Graph is unreachable") from exc
    if response.status_code in (401, 403):
        log.warning("Microsoft Graph refused to list a user's groups: %s", _GROUPS_SCOPE_HINT)
        raise AuthenticationFailed(
            "your account is in too many groups to fit in the sign-in token, and this "
            f"gateway may not look them up: {_GROUPS_SCOPE_HINT}",
            code="oidc_groups_unavailable",
        )
    if response.status_code != 200:
        raise UpstreamUnavailable(f"Microsoft Graph answered HTTP {response.status_code}")
    try:
        values = response.json().get("value")
    except (ValueError, AttributeError) as exc:
        raise UpstreamUnavailable("Microsoft Graph sent no list of groups") from exc
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UpstreamUnavailable("Microsoft Graph sent no list of groups")
    return values
