"""LDAP and Active Directory login: prove a username and password by binding as that user.

Two ways to find the user, as `LdapSettings` says:

* direct bind: the bind name comes from a template (``uid={username},ou=people,dc=...`` or,
  on Active Directory, ``{username}@corp.example``); after binding, the user reads their own
  entry through ``user_filter``;
* search-then-bind: a service account searches ``user_search_base`` with ``user_filter``; the
  one entry found is then bound with the password given.

Groups come from the entry's ``memberOf`` or from a group search. Every value a user types
is escaped before it reaches a DN (RFC 4514) or a filter (RFC 4515); an empty password is
refused before the directory is asked, because a bind with a DN and no password is an
*unauthenticated* bind that many servers answer with success (RFC 4513 §5.1.2).

ldap3 is blocking: each login runs in a worker thread, with connect and receive timeouts and
an overall deadline on the awaiting side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from typing import Any

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPSocketOpenError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from switchboard.auth.external import ExternalIdentity
from switchboard.auth.identity_providers import LdapSettings
from switchboard.errors import AuthenticationFailed, PermissionDenied, UpstreamUnavailable

log = logging.getLogger("switchboard.auth.ldap")

MAX_USERNAME = 256
INVALID_CREDENTIALS = 49
_BAD_LOGIN = "invalid username or password"


def _check_input(username: str, password: str) -> str:
    name = username.strip()
    if (
        not name
        or len(name) > MAX_USERNAME
        or any(ord(c) < 0x20 or c == "\x7f" for c in name)
        or not password  # never an unauthenticated bind
        or "\x00" in password
    ):
        raise AuthenticationFailed(_BAD_LOGIN, code="invalid_credentials")
    return name


def _servers(cfg: LdapSettings) -> list[ldap3.Server]:
    tls = ldap3.Tls(
        validate=ssl.CERT_REQUIRED if cfg.tls_verify else ssl.CERT_NONE,
        ca_certs_file=cfg.ca_file,
    )
    return [
        ldap3.Server(
            url,
            use_ssl=url.startswith("ldaps://"),
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=cfg.timeout_seconds,
        )
        for url in cfg.urls
    ]


class _Directory:
    """One login's conversation with the directory (runs in a worker thread)."""

    def __init__(self, cfg: LdapSettings, service_password: str | None) -> None:
        self.cfg = cfg
        self.service_password = service_password
        self.servers = _servers(cfg)
        self.opened: list[ldap3.Connection] = []

    def _open(self, user: str, password: str) -> ldap3.Connection:
        """A connection to the first server that answers (each tried once, in order); later
        binds of this login go to the same server."""
        for server in list(self.servers):
            conn = ldap3.Connection(
                server,
                user=user,
                password=password,
                authentication=ldap3.SIMPLE,
                read_only=True,
                auto_referrals=False,
                receive_timeout=math.ceil(self.cfg.timeout_seconds),  # ldap3 wants an int
                raise_exceptions=False,
            )
            self.opened.append(conn)
            try:
                conn.open()
            except LDAPSocketOpenError as exc:
                log.warning("LDAP server %s is unreachable: %s", server.name, exc)
                self.servers.remove(server)
                continue
            self.servers = [server]
            return conn
        raise UpstreamUnavailable("the directory is unreachable")

    def bind(self, user: str, password: str) -> ldap3.Connection | None:
        """A bound connection, or None when the directory says the credentials are wrong."""
        conn = self._open(user, password)
        if self.cfg.start_tls and not conn.start_tls():
            raise UpstreamUnavailable("StartTLS with the directory failed")
        if conn.bind():
            return conn
        if conn.result.get("result") == INVALID_CREDENTIALS:
            return None
        raise UpstreamUnavailable(
            f"the directory refused the bind: {conn.result.get('description', 'error')}"
        )

    def search(
        self, conn: ldap3.Connection, base: str, query: str, attributes: list[str]
    ) -> list[dict[str, Any]]:
        ok = conn.search(
            base,
            query,
            search_scope=ldap3.SUBTREE,
            attributes=attributes,
            size_limit=2 if attributes else 1000,
            time_limit=int(self.cfg.timeout_seconds) or 1,
        )
        if not ok and conn.result.get("result") not in (0, 4, 32):  # 4 size limit, 32 no base
            raise UpstreamUnavailable(
                f"directory search failed: {conn.result.get('description', 'error')}"
            )
        return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]

    def close(self) -> None:
        for conn in self.opened:
            with contextlib.suppress(LDAPException, OSError):
                conn.unbind()
            if conn.socket is not None:  # never opened, or left behind by a failure
                with contextlib.suppress(OSError):
                    conn.socket.close()


def _user_filter(cfg: LdapSettings, username: str) -> str:
    return cfg.user_filter.replace("{username}", escape_filter_chars(username))


def _attributes(cfg: LdapSettings) -> list[str]:
    wanted = [cfg.email_attribute, cfg.name_attribute, *cfg.extra_attributes]
    if cfg.group_source == "member_of":
        wanted.append(cfg.member_of_attribute)
    return wanted


def _one_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    if len(entries) != 1:  # none, or an ambiguous filter: never guess who this is
        raise AuthenticationFailed(_BAD_LOGIN, code="invalid_credentials")
    return entries[0]


def _login(
    cfg: LdapSettings, service_password: str | None, username: str, password: str
) -> ExternalIdentity:
    directory = _Directory(cfg, service_password)
    try:
        if cfg.bind_dn_template is not None:
            bind_name = cfg.bind_dn_template.replace("{username}", escape_rdn(username))
            reader = directory.bind(bind_name, password)
            if reader is None:
                raise AuthenticationFailed(_BAD_LOGIN, code="invalid_credentials")
            entry = _one_entry(
                directory.search(
                    reader, cfg.user_search_base, _user_filter(cfg, username), _attributes(cfg)
                )
            )
        else:
            assert cfg.bind_dn is not None
            reader = directory.bind(cfg.bind_dn, service_password or "")
            if reader is None:
                raise UpstreamUnavailable("the directory refused the service account's credentials")
            entry = _one_entry(
                directory.search(
                    reader, cfg.user_search_base, _user_filter(cfg, username), _attributes(cfg)
                )
            )
            if directory.bind(entry["dn"], password) is None:
                raise AuthenticationFailed(_BAD_LOGIN, code="invalid_credentials")
        groups = _groups(directory, reader, entry, username)
    except (LDAPSocketOpenError, LDAPStartTLSError) as exc:
        raise UpstreamUnavailable("the directory is unreachable") from exc
    except LDAPException as exc:
        raise UpstreamUnavailable(f"directory error: {type(exc).__name__}") from exc
    finally:
        directory.close()
    return _identity(cfg, entry, groups)


def _groups(
    directory: _Directory, conn: ldap3.Connection, entry: dict[str, Any], username: str
) -> tuple[str, ...]:
    cfg = directory.cfg
    if cfg.group_source == "member_of":
        return tuple(str(g) for g in _values(entry, cfg.member_of_attribute))
    assert cfg.group_search_base is not None
    query = cfg.group_filter.replace("{user_dn}", escape_filter_chars(entry["dn"])).replace(
        "{username}", escape_filter_chars(username)
    )
    found = directory.search(conn, cfg.group_search_base, query, [])
    return tuple(str(g["dn"]) for g in found)


def _values(entry: dict[str, Any], name: str) -> list[Any]:
    attrs: dict[str, Any] = entry.get("attributes") or {}
    for key, value in attrs.items():  # attribute names are case-insensitive
        if key.lower() == name.lower():
            return list(value) if isinstance(value, list) else [value]
    return []


def _first(entry: dict[str, Any], name: str) -> str | None:
    values = _values(entry, name)
    return str(values[0]) if values else None


def _identity(
    cfg: LdapSettings, entry: dict[str, Any], groups: tuple[str, ...]
) -> ExternalIdentity:
    email = _first(entry, cfg.email_attribute)
    if not email:
        raise PermissionDenied(
            f"your directory entry has no e-mail address ({cfg.email_attribute})",
            code="no_email",
        )
    claims: dict[str, Any] = {}
    for name in cfg.extra_attributes:
        values = [str(v) for v in _values(entry, name)]
        if values:
            claims[name] = values[0] if len(values) == 1 else values
    return ExternalIdentity(
        source="ldap",
        subject=str(entry["dn"]),
        email=email,
        name=_first(entry, cfg.name_attribute),
        groups=groups,
        claims=claims,
    )


async def ldap_login(
    cfg: LdapSettings, service_password: str | None, username: str, password: str
) -> ExternalIdentity:
    """The proven identity, or `AuthenticationFailed` (wrong credentials: one message for an
    unknown user and a wrong password), `UpstreamUnavailable` (directory down or misconfigured)."""
    name = _check_input(username, password)
    # ldap3 bounds each connect and each reply; this bounds the whole login (several round
    # trips, and every server of the pool in turn).
    deadline = cfg.timeout_seconds * (3 + 2 * len(cfg.urls))
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_login, cfg, service_password, name, password), deadline
        )
    except TimeoutError as exc:
        raise UpstreamUnavailable("the directory did not answer in time") from exc
