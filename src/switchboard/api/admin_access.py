"""The one place that guards /admin/v1: every route's permission, target and audit action.

`RULES` maps each (method, path) to the lowest role allowed, how the route's target is found
from the path, and the audit action its mutations are recorded under. `guard` wraps every
admin route at start-up and refuses to build the app if a route has no rule, so nothing under
/admin/v1 is reachable unguarded. For each request the guard

1. authenticates the caller (the platform admin key, or a session access token),
2. checks the caller's role against the rule,
3. resolves the target ({tenant}, {key_id}, {user_id}, {department_id}) inside the caller's
   scope: another tenant's path is 403; another tenant's key, user or department id is 404
   (it is looked up within the caller's tenant; a {user_id} without a {tenant} in the path
   too, and anywhere for a platform admin); inside the tenant but outside the caller's
   department or ownership is 403 (a GET needs the right to view the user, anything else the
   right to manage them),
4. hands the handler an `Access` (caller, scope, resolved objects), and
5. writes one audit row for every mutation: done, or denied.

Handlers narrow listings with ``access.scope`` and check what a request body asks for (the
role it grants, the owner of a new key) with `switchboard.auth.rbac`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from switchboard.api.callers import admin_principal, client_info
from switchboard.api.context import runtime
from switchboard.auth import rbac
from switchboard.auth.roles import Principal, Role
from switchboard.errors import AuthenticationFailed, NotFound, PermissionDenied
from switchboard.runtime import Runtime
from switchboard.store.departments import Department
from switchboard.store.keys import ApiKey
from switchboard.store.tenants import Tenant
from switchboard.store.users import User

Target = Literal["none", "tenant", "department", "user", "key"]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Rule:
    action: str  # the permission's name, and the audit action of a mutation
    role: Role  # the lowest role allowed
    target: Target = "none"
    audited_by_handler: bool = False  # the handler writes its own, richer audit row


_P: Role = "platform_admin"
_T: Role = "tenant_admin"
_D: Role = "department_admin"
_U: Role = "user"
_TENANT = "/admin/v1/tenants/{tenant}"

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/admin/v1/tenants"): Rule("tenant.list", _U),  # others see their own tenant
    ("POST", "/admin/v1/tenants"): Rule("tenant.create", _P),
    ("GET", _TENANT): Rule("tenant.read", _U, "tenant"),
    ("PATCH", _TENANT): Rule("tenant.update", _T, "tenant"),
    ("GET", f"{_TENANT}/config"): Rule("tenant.config.read", _T, "tenant"),
    ("PUT", f"{_TENANT}/config"): Rule("tenant.config.update", _T, "tenant"),
    ("GET", f"{_TENANT}/departments"): Rule("department.list", _D, "tenant"),
    ("POST", f"{_TENANT}/departments"): Rule("department.create", _T, "tenant"),
    ("GET", f"{_TENANT}/departments/{{department_id}}"): Rule("department.read", _D, "department"),
    ("PATCH", f"{_TENANT}/departments/{{department_id}}"): Rule(
        "department.update", _T, "department"
    ),
    ("DELETE", f"{_TENANT}/departments/{{department_id}}"): Rule(
        "department.delete", _T, "department"
    ),
    ("GET", f"{_TENANT}/users"): Rule("user.list", _D, "tenant"),
    ("POST", f"{_TENANT}/users"): Rule("user.create", _D, "tenant"),
    ("GET", f"{_TENANT}/users/{{user_id}}"): Rule("user.read", _U, "user"),
    ("PATCH", f"{_TENANT}/users/{{user_id}}"): Rule("user.update", _D, "user"),
    ("DELETE", f"{_TENANT}/users/{{user_id}}"): Rule("user.delete", _D, "user"),
    ("GET", "/admin/v1/users/{user_id}/sessions"): Rule("user.session.list", _U, "user"),
    ("DELETE", "/admin/v1/users/{user_id}/sessions"): Rule("user.session.revoke_all", _D, "user"),
    ("DELETE", "/admin/v1/users/{user_id}/sessions/{session_id}"): Rule(
        "user.session.revoke", _D, "user"
    ),
    ("GET", f"{_TENANT}/keys"): Rule("key.list", _U, "tenant"),
    ("POST", f"{_TENANT}/keys"): Rule("key.create", _U, "tenant"),
    ("POST", "/admin/v1/keys/{key_id}/revoke"): Rule("key.revoke", _U, "key"),
    ("GET", f"{_TENANT}/usage"): Rule("usage.read", _U, "tenant"),
    ("GET", "/admin/v1/keys/{key_id}/policy"): Rule("key.policy.read", _U, "key"),
    ("PUT", "/admin/v1/keys/{key_id}/policy"): Rule("key.policy.update", _T, "key"),
    ("GET", f"{_TENANT}/budget"): Rule("tenant.budget.read", _T, "tenant"),
    ("GET", f"{_TENANT}/identity-providers"): Rule("identity_provider.list", _T, "tenant"),
    ("POST", f"{_TENANT}/identity-providers"): Rule("identity_provider.create", _T, "tenant"),
    ("GET", f"{_TENANT}/identity-providers/{{name}}"): Rule("identity_provider.read", _T, "tenant"),
    ("PUT", f"{_TENANT}/identity-providers/{{name}}"): Rule(
        "identity_provider.update", _T, "tenant"
    ),
    ("DELETE", f"{_TENANT}/identity-providers/{{name}}"): Rule(
        "identity_provider.delete", _T, "tenant"
    ),
    ("GET", "/admin/v1/audit"): Rule("audit.read", _T),
    ("GET", "/admin/v1/platform-admins"): Rule("platform_admin.list", _P),
    ("POST", "/admin/v1/platform-admins"): Rule("platform_admin.create", _P),
    ("PATCH", "/admin/v1/platform-admins/{user_id}"): Rule("platform_admin.update", _P),
    ("DELETE", "/admin/v1/platform-admins/{user_id}"): Rule("platform_admin.delete", _P),
    ("GET", "/admin/v1/models"): Rule("models.read", _P),
    ("GET", "/admin/v1/routing"): Rule("routing.read", _P),
    ("GET", "/admin/v1/doctor"): Rule("doctor.read", _P),
    ("GET", f"{_TENANT}/plan"): Rule("plan.read", _T, "tenant"),
    ("PUT", f"{_TENANT}/plan"): Rule("plan.update", _P, "tenant"),
    ("GET", "/admin/v1/prices"): Rule("prices.read", _P),
    ("GET", f"{_TENANT}/invoice"): Rule("invoice.read", _T, "tenant"),
    ("GET", "/admin/v1/analytics"): Rule("analytics.read", _U),  # narrowed to the caller's scope
    ("GET", "/admin/v1/export"): Rule("export.read", _P),
    ("GET", "/admin/v1/export/dead"): Rule("export.read", _P),
    ("POST", "/admin/v1/export/redrive"): Rule("export.redrive", _P),
}


@dataclass
class Access:
    """What the guard established about one admin request."""

    principal: Principal
    scope: rbac.Scope
    rule: Rule
    tenant: Tenant | None = None
    department: Department | None = None
    user: User | None = None
    key: ApiKey | None = None
    key_owner: User | None = None
    # What the audit row of a mutation says: the handler adds its target and details.
    audit_target: str | None = None
    audit_tenant_id: str | None = None
    audit_details: dict[str, Any] = field(default_factory=dict)

    def audit(self, target: str | None = None, **details: Any) -> None:
        """Name the mutation's target and add details (ids and field names, never secrets)."""
        if target is not None:
            self.audit_target = target
        self.audit_details.update(details)


def access(request: Request) -> Access:
    """The guard's findings; every /admin/v1 handler starts here."""
    found: Access | None = getattr(request.state, "access", None)
    if found is None:  # a route wired without the guard: never serve it
        raise PermissionDenied("this route is not guarded", code="unguarded_route")
    return found


async def _own_tenant(rt: Runtime, p: Principal, named: str) -> Tenant:
    """The tenant a path names, refused before lookup when it is not the caller's own (so
    nobody learns which other tenants exist)."""
    if p.role == "platform_admin":
        return await rt.platform.tenants.get(named)
    assert p.tenant_id is not None
    own = await rt.platform.tenants.get(p.tenant_id)
    if named not in (own.id, own.slug):
        raise rbac.deny("this tenant is not yours")
    return own


def _check_user(p: Principal, user: User, *, reading: bool) -> None:
    if reading:
        rbac.check_view_user(p, user)
    else:
        rbac.check_manage_user(p, user)


async def _user_by_id(rt: Runtime, p: Principal, user_id: str) -> User:
    """A user named by id alone: within the caller's tenant, or anywhere (platform admins
    included) for a platform admin."""
    if p.role != "platform_admin":
        return await rt.platform.users.get(p.tenant_id, user_id)
    found = await rt.platform.users.get_any(user_id)
    if found is None:
        raise NotFound(f"no user {user_id!r}", param="user_id")
    return found


async def _resolve(rt: Runtime, a: Access, params: Mapping[str, str], *, reading: bool) -> None:
    p, platform = a.principal, rt.platform
    if a.rule.target == "user" and "tenant" not in params:
        a.user = await _user_by_id(rt, p, params["user_id"])
        a.audit_tenant_id, a.audit_target = a.user.tenant_id, a.user.id  # denied rows name them
        _check_user(p, a.user, reading=reading)
        return
    if a.rule.target == "key":
        tenant_scope = None if p.role == "platform_admin" else p.tenant_id
        a.key = await platform.keys.get(params["key_id"], tenant_id=tenant_scope)
        if a.key.user_id is not None:
            a.key_owner = await platform.users.get(a.key.tenant_id, a.key.user_id)
        rbac.check_key(p, a.key, a.key_owner)
        a.audit_tenant_id = a.key.tenant_id
        a.audit_target = a.key.id
        return
    if "tenant" not in params:
        return
    a.tenant = await _own_tenant(rt, p, params["tenant"])
    rbac.check_tenant(p, a.tenant.id)
    a.audit_tenant_id = a.tenant.id
    a.audit_target = a.tenant.id
    if a.rule.target == "department":
        a.department = await platform.departments.get(a.tenant.id, params["department_id"])
        rbac.check_department(p, a.department)
        a.audit_target = a.department.id
    elif a.rule.target == "user":
        a.user = await platform.users.get(a.tenant.id, params["user_id"])
        _check_user(p, a.user, reading=reading)
        a.audit_target = a.user.id


def _guarded(rule: Rule, endpoint: Endpoint, *, mutation: bool, reading: bool) -> Endpoint:
    async def guarded(request: Request) -> Response:
        rt = runtime(request)
        principal: Principal | None = None
        a: Access | None = None
        try:
            principal = await admin_principal(request, rt)
            rbac.require_role(principal, rule.role)
            a = Access(principal, rbac.scope_of(principal), rule)
            await _resolve(rt, a, request.path_params, reading=reading)
            request.state.access = a
            response = await endpoint(request)
        except (AuthenticationFailed, PermissionDenied, NotFound) as exc:
            if mutation:
                await _audit(rt, request, rule, principal, a, outcome=_outcome(exc))
            raise
        if mutation and response.status_code < 400:
            await _audit(rt, request, rule, principal, a, outcome="ok")
        return response

    guarded.__name__ = getattr(endpoint, "__name__", "guarded")
    return guarded


def _outcome(exc: Exception) -> str:
    return "not_found" if isinstance(exc, NotFound) else "denied"


async def _audit(
    rt: Runtime,
    request: Request,
    rule: Rule,
    principal: Principal | None,
    a: Access | None,
    *,
    outcome: str,
) -> None:
    tenant_id = a.audit_tenant_id if a else None
    if tenant_id is None and principal is not None:
        tenant_id = principal.tenant_id
    await rt.auditor.record(
        principal,
        rule.action,
        tenant_id=tenant_id,
        target=a.audit_target if a else None,
        outcome=outcome,
        details={"path": request.url.path, **(a.audit_details if a else {})},
        client=client_info(request),
    )


def guard(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Every /admin/v1 route wrapped by its rule; a route without one stops start-up."""
    out: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith("/admin/v1"):
            out.append(route)
            continue
        methods = sorted((route.methods or set()) - {"HEAD"})
        for method in methods:
            rule = RULES.get((method, route.path))
            if rule is None:
                raise RuntimeError(f"no access rule for {method} {route.path}")
            audited = method != "GET" and not rule.audited_by_handler
            endpoint = _guarded(rule, route.endpoint, mutation=audited, reading=method == "GET")
            out.append(Route(route.path, endpoint, methods=[method], name=route.name))
    return out
