"""The audit trail: an append-only record of who did what to which result or account, and when.

There is deliberately no update or delete here; the database refuses both with triggers (see
:data:`node.store.schema.audit`). Other stores that must write an audit line in the same transaction
as their own change use :func:`audit_insert`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.sql.dml import Insert

from node.store.index import Index
from node.store.schema import audit


class AuditAction(StrEnum):
    """Everything the node audits."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGIN_BLOCKED = "login_blocked"
    LOGOUT = "logout"
    VIEW_STUDY = "view_study"
    SIGN_OFF = "sign_off"
    AMEND = "amend"
    REJECT = "reject"
    REVIEW_REFUSED = "review_refused"
    USER_ADD = "user_add"
    USER_DISABLE = "user_disable"
    USER_RESET = "user_reset"
    DELIVERY_RETRY = "delivery_retry"
    TOKEN_ADD = "token_add"
    TOKEN_REVOKE = "token_revoke"
    STOW = "stow"
    STOW_REFUSED = "stow_refused"


@dataclass(frozen=True)
class AuditEntry:
    """One audit line. ``actor`` is a user name (or ``-`` for an unknown one), ``address`` a client."""

    at: datetime
    actor: str
    address: str
    action: AuditAction
    target: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (``dicomnode audit --json``)."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "address": self.address,
            "action": str(self.action),
            "target": self.target,
            "details": self.details,
        }


def audit_insert(entry: AuditEntry) -> Insert:
    """The INSERT of one entry, for a caller that runs it inside its own transaction."""
    return insert(audit).values(
        at=entry.at,
        actor=entry.actor,
        address=entry.address,
        action=str(entry.action),
        target=entry.target,
        details=entry.details,
    )


class AuditLog:
    """Append and read the audit trail."""

    def __init__(self, index: Index) -> None:
        self._engine = index.engine

    def record(self, entry: AuditEntry) -> None:
        """Append one entry (its own transaction)."""
        with self._engine.begin() as connection:
            connection.execute(audit_insert(entry))

    def entries(
        self, limit: int = 100, action: AuditAction | None = None, target: str | None = None
    ) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first, optionally of one action or target."""
        query = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if action is not None:
            query = query.where(audit.c.action == str(action))
        if target is not None:
            query = query.where(audit.c.target == target)
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            AuditEntry(
                id=int(row["id"]),
                at=row["at"],
                actor=str(row["actor"]),
                address=str(row["address"]),
                action=AuditAction(row["action"]),
                target=row["target"],
                details=dict(row["details"] or {}),
            )
            for row in rows
        ]
