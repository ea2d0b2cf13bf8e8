"""Writing the audit log: who (a `Principal`, or nobody yet), did what, to what, from where.

``details`` must never carry secrets: callers pass ids, names and changed field names, not
passwords, keys or tokens. A failure to write is logged and re-raised: an action that cannot
be audited does not silently pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard.auth.roles import Principal
from switchboard.store.audit import AuditRepository


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request came from, as the gateway saw it."""

    ip: str | None = None
    user_agent: str | None = None


LOCAL = ClientInfo(ip=None, user_agent="switchboard-cli")


class Auditor:
    def __init__(self, repository: AuditRepository) -> None:
        self._repository = repository

    async def record(
        self,
        actor: Principal | None,
        action: str,
        *,
        tenant_id: str | None,
        target: str | None = None,
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
        client: ClientInfo = LOCAL,
        actor_id: str | None = None,
    ) -> None:
        """``actor_id`` names an actor who is not (yet) a principal, e.g. a failed login's
        e-mail address."""
        await self._repository.append(
            actor_kind=actor.kind if actor else "anonymous",
            actor_id=actor.actor_id if actor else actor_id,
            actor_role=actor.role if actor else None,
            tenant_id=tenant_id,
            action=action,
            target=target,
            outcome=outcome,
            details=details,
            client_ip=client.ip,
            user_agent=client.user_agent,
        )
