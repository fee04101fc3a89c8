"""API tokens: who may send studies to the node by STOW-RS, one token per sending system.

A token is 256 random bits shown once, when it is made; the index keeps only its SHA-256 (a token is
never guessable, so a fast hash is enough and a request costs one indexed lookup). A token is revoked,
never deleted, so the audit lines naming it keep their meaning. Every change is audited with it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from node.accounts.errors import InvalidAccount, UnknownUser, UserExists
from node.accounts.service import USER_NAME
from node.store.audit import AuditAction, AuditEntry, audit_insert
from node.store.index import Index
from node.store.schema import api_tokens

#: How a token is presented: ``Authorization: Bearer <token>``.
BEARER = "bearer"


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """One sender's token (never the token itself)."""

    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        """Whether the token is accepted."""
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (``dicomnode tokens list --json``)."""
        return {
            "name": self.name,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


def _token(row: Any) -> ApiToken:
    return ApiToken(
        name=str(row["name"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


class TokenStore:
    """Makes, lists, revokes and checks API tokens."""

    def __init__(self, index: Index) -> None:
        self._engine = index.engine

    def add(self, name: str, actor: str, address: str, now: datetime) -> str:
        """Make a token for sender ``name``; returns the token (the only time it is seen).

        Raises
        ------
        InvalidAccount
            The name is not 1-64 of letters, digits and ``. _ @ -``.
        UserExists
            The name has a token already (revoked ones included: pick another name).
        """
        if not USER_NAME.match(name):
            raise InvalidAccount("a token name is 1-64 letters, digits and . _ @ -")
        token = secrets.token_urlsafe(32)
        entry = AuditEntry(at=now, actor=actor, address=address, action=AuditAction.TOKEN_ADD, target=name)
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(api_tokens).values(name=name, token_hash=token_hash(token), created_at=now)
                )
                connection.execute(audit_insert(entry))
        except IntegrityError:
            raise UserExists(f"a token named {name} exists already") from None
        return token

    def revoke(self, name: str, actor: str, address: str, now: datetime) -> None:
        """Stop accepting ``name``'s token (at once, for every node sharing the index).

        Raises
        ------
        UnknownUser
            No active token has that name.
        """
        entry = AuditEntry(at=now, actor=actor, address=address, action=AuditAction.TOKEN_REVOKE, target=name)
        with self._engine.begin() as connection:
            changed = connection.execute(
                update(api_tokens)
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            if changed != 1:
                raise UnknownUser(f"no active token named {name}")
            connection.execute(audit_insert(entry))

    def all(self) -> list[ApiToken]:
        """Every token, by name."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(api_tokens).order_by(api_tokens.c.name)).mappings().all()
        return [_token(row) for row in rows]

    def sender(self, authorization: str | None, now: datetime) -> str | None:
        """The name of the sender an ``Authorization`` header authenticates, or None.

        Only ``Bearer <token>`` of an active token authenticates; its last use is recorded.
        """
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != BEARER or not token.strip():
            return None
        digest = token_hash(token.strip())
        with self._engine.begin() as connection:
            name = connection.execute(
                select(api_tokens.c.name).where(
                    api_tokens.c.token_hash == digest, api_tokens.c.revoked_at.is_(None)
                )
            ).scalar_one_or_none()
            if name is not None:
                connection.execute(
                    update(api_tokens).where(api_tokens.c.name == name).values(last_used_at=now)
                )
        return None if name is None else str(name)
