"""Who may do what to which object: the permission checks every admin route goes through.

Pure functions over a `Principal` and the objects a route acts on; no I/O. The per-route table
(`switchboard.api.admin_access.RULES`) says which role a route needs at least and how its
target is found; these functions then decide whether the target is inside the caller's scope.

    role               scope                  may manage users with role     keys
    platform_admin     everything             any tenant role                all
    tenant_admin       own tenant             tenant_admin and below         all of the tenant
    department_admin   own department         user (in own department)       own department's
    user               self                   nobody                         own
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.auth.roles import RANK, Principal, Role
from switchboard.errors import PermissionDenied
from switchboard.store.departments import Department
from switchboard.store.keys import ApiKey
from switchboard.store.users import User


def deny(message: str = "this is outside what your role may reach") -> PermissionDenied:
    return PermissionDenied(message, code="outside_scope")


@dataclass(frozen=True, slots=True)
class Scope:
    """What a caller's listings are narrowed to; None means no narrowing on that level."""

    tenant_id: str | None
    department_id: str | None
    user_id: str | None


def scope_of(p: Principal) -> Scope:
    if p.role == "platform_admin":
        return Scope(None, None, None)
    if p.role == "tenant_admin":
        return Scope(p.tenant_id, None, None)
    if p.role == "department_admin":
        # A department admin without a department (moved out of it) sees nothing of others.
        return Scope(p.tenant_id, p.department_id or "-", None)
    return Scope(p.tenant_id, None, p.user_id)


def require_role(p: Principal, role: Role) -> None:
    if not p.at_least(role):
        raise PermissionDenied(
            f"this needs the {role} role or higher; you are {p.role}", code="insufficient_role"
        )


def check_tenant(p: Principal, tenant_id: str) -> None:
    if p.role != "platform_admin" and p.tenant_id != tenant_id:
        raise deny("this tenant is not yours")


def check_department(p: Principal, department: Department) -> None:
    check_tenant(p, department.tenant_id)
    if p.at_least("tenant_admin"):
        return
    if p.department_id != department.id:
        raise deny("this department is not yours")


def can_view_user(p: Principal, user: User) -> bool:
    return user.id == p.user_id or can_manage_user(p, user)


def can_manage_user(p: Principal, user: User) -> bool:
    if p.role == "platform_admin":
        return True
    if user.tenant_id != p.tenant_id:
        return False
    if p.role == "tenant_admin":
        return True
    return (
        p.role == "department_admin"
        and p.department_id is not None
        and user.department_id == p.department_id
        and RANK[user.role] < RANK["department_admin"]
    )


def check_view_user(p: Principal, user: User) -> None:
    if not can_view_user(p, user):
        raise deny("this user is not in your scope")


def check_manage_user(p: Principal, user: User) -> None:
    if not can_manage_user(p, user):
        raise deny("you may not manage this user")


def check_assignment(p: Principal, role: Role, department_id: str | None) -> None:
    """May ``p`` give someone ``role`` in ``department_id``? (creating or changing a user)"""
    if role == "platform_admin" and p.role != "platform_admin":
        raise deny("only a platform admin can make a platform admin")
    if p.role in ("platform_admin", "tenant_admin"):
        return
    if p.role != "department_admin" or role != "user":
        raise deny(f"a {p.role} cannot give the {role} role")
    if department_id is None or department_id != p.department_id:
        raise deny("a department admin places users in their own department only")


def check_key(p: Principal, key: ApiKey, owner: User | None) -> None:
    """May ``p`` see and revoke ``key``? (``owner``: the key's user, None for service keys)"""
    check_tenant(p, key.tenant_id)
    if p.at_least("tenant_admin"):
        return
    if key.user_id is not None and key.user_id == p.user_id:
        return
    if owner is not None and p.role == "department_admin" and can_manage_user(p, owner):
        return
    raise deny("this key is not in your scope")


def check_key_owner(p: Principal, owner: User | None) -> None:
    """May ``p`` create a key for ``owner`` (None: a tenant service key)?"""
    if owner is None:
        if not p.at_least("tenant_admin"):
            raise deny("only a tenant admin can create service keys")
        return
    if owner.disabled:
        raise deny("this user is disabled")
    if owner.id != p.user_id and not can_manage_user(p, owner):
        raise deny("you may not create keys for this user")
