"""A person proven by an outside identity provider (LDAP/AD bind or OIDC), before mapping.

The LDAP and OIDC login flows produce an `ExternalIdentity`; the identity layer maps its
groups or claims to a role and department, provisions or updates the user, and issues a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    source: Literal["ldap", "oidc"]
    subject: str  # stable id at the provider: the LDAP DN, or the OIDC issuer + "|" + sub
    email: str
    name: str | None = None
    groups: tuple[str, ...] = ()  # LDAP group DNs/CNs, or OIDC group/role claim values
    claims: dict[str, Any] = field(default_factory=dict)  # raw OIDC claims; empty for LDAP
