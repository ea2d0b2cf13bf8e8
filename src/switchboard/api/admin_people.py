"""Admin routes for a tenant's people: departments and users; and the audit log.

Guarded like every /admin/v1 route by `switchboard.api.admin_access`; what a request body asks
for (the role it grants, the department it places someone in) is checked here with
`switchboard.auth.rbac`. Passwords go in, never out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.admin import _admin, _object, _optional_str, _tenant
from switchboard.api.admin_access import Access, access
from switchboard.api.http import JSONResponse
from switchboard.auth import rbac
from switchboard.auth.passwords import hash_password
from switchboard.auth.roles import check_role
from switchboard.auth.sessions import user_view
from switchboard.errors import InvalidRequest
from switchboard.metering import report
from switchboard.runtime import Runtime
from switchboard.store.audit import AuditFilter
from switchboard.store.tenants import Tenant
from switchboard.store.users import User, normalize_email
from switchboard.views import plain

_MAX_AUDIT = 1000
_USER_FIELDS = {"email", "name", "role", "department", "password", "disabled"}


# -- departments ----------------------------------------------------------------------------


async def list_departments(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    found = await rt.platform.departments.list(
        _tenant(request).id, department_id=a.scope.department_id
    )
    return JSONResponse({"data": [plain(d) for d in found]})


def _name(body: dict[str, Any]) -> str:
    name = _optional_str(body, "name")
    if not name:
        raise InvalidRequest("'name' is required", param="name")
    return name


async def create_department(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    department = await rt.platform.departments.create(
        _tenant(request).id, _name(await _object(request))
    )
    a.audit(department.id, name=department.name)
    return JSONResponse(plain(department), status_code=201)


def _department(a: Access) -> Any:
    assert a.department is not None
    return a.department


async def get_department(request: Request) -> Response:
    await _admin(request)
    return JSONResponse(plain(_department(access(request))))


async def rename_department(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    name = _name(await _object(request))
    department = await rt.platform.departments.rename(_tenant(request).id, _department(a).id, name)
    a.audit(name=department.name)
    return JSONResponse(plain(department))


async def delete_department(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    await rt.platform.departments.delete(_tenant(request).id, _department(a).id)
    return Response(status_code=204)


# -- users ----------------------------------------------------------------------------------


async def _department_id(rt: Runtime, tenant: Tenant, named: object) -> str | None:
    """A department named by id or name (None clears it)."""
    if named is None:
        return None
    if not isinstance(named, str) or not named:
        raise InvalidRequest("'department' must be a department's id or name", param="department")
    departments = rt.platform.departments
    if named.startswith("dep_"):
        return (await departments.get(tenant.id, named)).id
    found = await departments.find_by_name(tenant.id, named)
    if found is None:
        raise InvalidRequest(f"no department {named!r} in this tenant", param="department")
    return found.id


async def list_users(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    found = await rt.platform.users.list(
        _tenant(request).id, department_id=a.scope.department_id, user_id=a.scope.user_id
    )
    return JSONResponse({"data": [user_view(u) for u in found]})


async def create_user(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    tenant = _tenant(request)
    body = await _object(request)
    role = check_role(body.get("role", "user"))
    if "department" in body:
        department_id = await _department_id(rt, tenant, body["department"])
    else:  # a department admin's new users join their department
        department_id = (
            a.principal.department_id if a.principal.role == "department_admin" else None
        )
    rbac.check_assignment(a.principal, role, department_id)
    password = body.get("password")
    user = await rt.platform.users.create(
        tenant.id,
        normalize_email(body.get("email")),
        role=role,
        name=_optional_str(body, "name"),
        department_id=department_id,
        password_hash=await hash_password(password) if password is not None else None,
    )
    a.audit(user.id, email=user.email, role=role, department_id=department_id)
    return JSONResponse(user_view(user), status_code=201)


def _user(a: Access) -> User:
    assert a.user is not None
    return a.user


async def get_user(request: Request) -> Response:
    await _admin(request)
    return JSONResponse(user_view(_user(access(request))))


async def update_user(request: Request) -> Response:
    """Change e-mail, name, role, department, password or the disabled flag."""
    rt, a = await _admin(request), access(request)
    tenant, user = _tenant(request), _user(a)
    body = await _object(request)
    unknown = set(body) - _USER_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    values: dict[str, Any] = {k: body[k] for k in ("email", "name") if k in body}
    if "role" in body or "department" in body:
        role = check_role(body.get("role", user.role))
        department_id = (
            await _department_id(rt, tenant, body["department"])
            if "department" in body
            else user.department_id
        )
        if user.id == a.principal.user_id and role != user.role:
            raise rbac.deny("you cannot change your own role")
        rbac.check_assignment(a.principal, role, department_id)
        values.update(role=role, department_id=department_id)
    if "password" in body:
        values["password_hash"] = await hash_password(body["password"])
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise InvalidRequest("'disabled' must be true or false", param="disabled")
        values["disabled"] = body["disabled"]
    updated = await rt.platform.users.update(tenant.id, user.id, **values)
    if updated.disabled or "password_hash" in values:
        reason = "disabled" if updated.disabled else "password"
        await rt.sessions.end_user_sessions(user.id, reason, tenant_id=tenant.id)
    if "disabled" in values:  # their keys stop (or start again) working
        rt.keys.forget(tenant_id=tenant.id)
    a.audit(fields=sorted(body), role=updated.role, department_id=updated.department_id)
    return JSONResponse(user_view(updated))


async def delete_user(request: Request) -> Response:
    """Delete a user: sessions end, keys are revoked (and kept for the usage history)."""
    rt, a = await _admin(request), access(request)
    tenant, user = _tenant(request), _user(a)
    if user.id == a.principal.user_id:
        raise rbac.deny("you cannot delete yourself")
    await rt.sessions.end_user_sessions(user.id, "deleted", tenant_id=tenant.id)
    await rt.platform.users.delete(tenant.id, user.id)
    rt.keys.forget(tenant_id=tenant.id)
    a.audit(email=user.email)
    return Response(status_code=204)


# -- audit log ------------------------------------------------------------------------------


def _int(value: str | None, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}", param=name)
    return int(value)


def _time(value: str | None, name: str) -> datetime | None:
    try:
        return report.parse_since(value)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, param=name) from exc


async def audit_log(request: Request) -> Response:
    """Newest first; ``cursor`` is the previous page's ``next_cursor``."""
    rt, a = await _admin(request), access(request)
    params = request.query_params
    tenant_id = a.scope.tenant_id
    named = params.get("tenant")
    if named is not None:
        tenant = await rt.platform.tenants.get(named) if tenant_id is None else None
        if tenant is None:
            assert tenant_id is not None
            own = await rt.platform.tenants.get(tenant_id)
            if named not in (own.id, own.slug):
                raise rbac.deny("this tenant is not yours")
            tenant = own
        tenant_id = tenant.id
    limit = _int(params.get("limit"), "limit", 1, _MAX_AUDIT) or 100
    entries = await rt.platform.audit.query(
        AuditFilter(
            tenant_id=tenant_id,
            actor_id=params.get("actor"),
            action=params.get("action"),
            since=_time(params.get("since"), "since"),
            until=_time(params.get("until"), "until"),
            before=_int(params.get("cursor"), "cursor", 1, 2**62),
            limit=limit,
        )
    )
    next_cursor = entries[-1].id if len(entries) == limit else None
    return JSONResponse({"data": [plain(e) for e in entries], "next_cursor": next_cursor})


_T = "/admin/v1/tenants/{tenant}"

routes = [
    Route(f"{_T}/departments", list_departments, methods=["GET"]),
    Route(f"{_T}/departments", create_department, methods=["POST"]),
    Route(f"{_T}/departments/{{department_id}}", get_department, methods=["GET"]),
    Route(f"{_T}/departments/{{department_id}}", rename_department, methods=["PATCH"]),
    Route(f"{_T}/departments/{{department_id}}", delete_department, methods=["DELETE"]),
    Route(f"{_T}/users", list_users, methods=["GET"]),
    Route(f"{_T}/users", create_user, methods=["POST"]),
    Route(f"{_T}/users/{{user_id}}", get_user, methods=["GET"]),
    Route(f"{_T}/users/{{user_id}}", update_user, methods=["PATCH"]),
    Route(f"{_T}/users/{{user_id}}", delete_user, methods=["DELETE"]),
    Route("/admin/v1/audit", audit_log, methods=["GET"]),
]


# -- platform admins ------------------------------------------------------------------------


async def list_platform_admins(request: Request) -> Response:
    rt = await _admin(request)
    return JSONResponse({"data": [user_view(u) for u in await rt.platform.users.list(None)]})


async def create_platform_admin(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    body = await _object(request)
    password = body.get("password")
    user = await rt.platform.users.create(
        None,
        normalize_email(body.get("email")),
        role="platform_admin",
        name=_optional_str(body, "name"),
        password_hash=await hash_password(password) if password is not None else None,
    )
    a.audit(user.id, email=user.email, role="platform_admin")
    return JSONResponse(user_view(user), status_code=201)


async def update_platform_admin(request: Request) -> Response:
    """Change a platform admin's e-mail, name, password or disabled flag."""
    rt, a = await _admin(request), access(request)
    user = await rt.platform.users.get(None, request.path_params["user_id"])
    body = await _object(request)
    unknown = set(body) - {"email", "name", "password", "disabled"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    values: dict[str, Any] = {k: body[k] for k in ("email", "name") if k in body}
    if "password" in body:
        values["password_hash"] = await hash_password(body["password"])
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise InvalidRequest("'disabled' must be true or false", param="disabled")
        if body["disabled"] and user.id == a.principal.user_id:
            raise rbac.deny("you cannot disable yourself")
        values["disabled"] = body["disabled"]
    updated = await rt.platform.users.update(None, user.id, **values)
    if updated.disabled or "password_hash" in values:
        keep = a.principal.session_id if user.id == a.principal.user_id else None
        await rt.sessions.end_user_sessions(user.id, "changed", tenant_id=None, keep=keep)
    a.audit(user.id, fields=sorted(body))
    return JSONResponse(user_view(updated))


async def delete_platform_admin(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    user = await rt.platform.users.get(None, request.path_params["user_id"])
    if user.id == a.principal.user_id:
        raise rbac.deny("you cannot delete yourself")
    await rt.sessions.end_user_sessions(user.id, "deleted", tenant_id=None)
    await rt.platform.users.delete(None, user.id)
    a.audit(user.id, email=user.email)
    return Response(status_code=204)


routes += [
    Route("/admin/v1/platform-admins", list_platform_admins, methods=["GET"]),
    Route("/admin/v1/platform-admins", create_platform_admin, methods=["POST"]),
    Route("/admin/v1/platform-admins/{user_id}", update_platform_admin, methods=["PATCH"]),
    Route("/admin/v1/platform-admins/{user_id}", delete_platform_admin, methods=["DELETE"]),
]
