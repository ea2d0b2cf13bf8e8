"""Roles, who is calling the admin API, and what part of the data each caller may see.

    platform_admin    every tenant                     (the platform admin key acts as one)
    tenant_admin      one tenant
    department_admin  one department of one tenant
    user              their own keys and usage

A `Principal` is an authenticated caller; its `Scope` is the data it may touch. Repositories
take the scope's fields as filters, so a query can never reach past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from switchboard.errors import InvalidRequest

Role = Literal["platform_admin", "tenant_admin", "department_admin", "user"]
ROLES: tuple[Role, ...] = get_args(Role)
# Higher ranks may do everything lower ranks may, within their own scope.
RANK: dict[str, int] = {"user": 0, "department_admin": 1, "tenant_admin": 2, "platform_admin": 3}
Source = Literal["local", "ldap", "oidc"]


def check_role(value: object, param: str = "role") -> Role:
    if value not in ROLES:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(ROLES)}", param=param)
    return value


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the platform admin key, a signed-in user, or the local CLI."""

    kind: Literal["admin_key", "user", "cli"]
    role: Role
    user_id: str | None = None
    email: str | None = None
    tenant_id: str | None = None  # None only for platform admins
    department_id: str | None = None
    session_id: str | None = None

    @property
    def actor_id(self) -> str:
        return self.user_id or self.kind

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


ADMIN_KEY = Principal(kind="admin_key", role="platform_admin")
CLI = Principal(kind="cli", role="platform_admin")
