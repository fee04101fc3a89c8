"""The users table: who may log in, in which role; every change is written with its audit line."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from node.store.audit import AuditEntry, audit_insert
from node.store.index import Index
from node.store.schema import users


class Role(StrEnum):
    """What a user may do: radiologists review results; admins only look (and manage via the CLI)."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


@dataclass(frozen=True)
class User:
    """A worklist user (never with the password hash)."""

    id: int
    name: str
    role: Role
    full_name: str
    organization: str
    identification_code: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @property
    def can_review(self) -> bool:
        """Whether this user may sign off, amend or reject results."""
        return self.role == Role.RADIOLOGIST and not self.disabled

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (``dicomnode users list --json``)."""
        return {
            "name": self.name,
            "role": str(self.role),
            "full_name": self.full_name,
            "organization": self.organization,
            "identification_code": self.identification_code,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _user(row: Any) -> User:
    return User(
        id=int(row["id"]),
        name=str(row["name"]),
        role=Role(row["role"]),
        full_name=str(row["full_name"]),
        organization=str(row["organization"]),
        identification_code=row["identification_code"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class UserStore:
    """Reads and audited writes of the users table."""

    def __init__(self, index: Index) -> None:
        self._engine = index.engine

    def add(
        self,
        *,
        name: str,
        role: Role,
        full_name: str,
        organization: str,
        identification_code: str | None,
        password_hash: str,
        now: datetime,
        entry: AuditEntry,
    ) -> bool:
        """Create a user and audit it atomically; False when the name is taken."""
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(users).values(
                        name=name,
                        role=str(role),
                        full_name=full_name,
                        organization=organization,
                        identification_code=identification_code,
                        password_hash=password_hash,
                        disabled=False,
                        created_at=now,
                        updated_at=now,
                    )
                )
                connection.execute(audit_insert(entry))
        except IntegrityError:
            return False
        return True

    def get(self, name: str) -> User | None:
        """A user by name."""
        found = self.credentials(name)
        return None if found is None else found[0]

    def by_id(self, user_id: int) -> User | None:
        """A user by id."""
        with self._engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.id == user_id)).mappings().first()
        return None if row is None else _user(row)

    def credentials(self, name: str) -> tuple[User, str] | None:
        """A user and their password hash."""
        with self._engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.name == name)).mappings().first()
        return None if row is None else (_user(row), str(row["password_hash"]))

    def all(self) -> list[User]:
        """Every user, by name."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(users).order_by(users.c.name)).mappings().all()
        return [_user(row) for row in rows]

    def change(self, name: str, values: dict[str, Any], now: datetime, entry: AuditEntry) -> bool:
        """Update a user's columns and audit it atomically; False when there is no such user."""
        with self._engine.begin() as connection:
            changed = connection.execute(
                update(users).where(users.c.name == name).values(**values, updated_at=now)
            ).rowcount
            if changed != 1:
                return False
            connection.execute(audit_insert(entry))
        return True
