"""Browser sessions: a random cookie token (only its SHA-256 is stored) and a per-session CSRF token."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select

from node.accounts.users import User
from node.store.index import Index
from node.store.schema import web_sessions

TOKEN_BYTES = 32


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class Session:
    """A logged-in session: its cookie token, the CSRF token its forms carry, and when it ends."""

    token: str
    csrf_token: str
    user_id: int
    expires_at: datetime


class SessionStore:
    """Create, look up and end sessions."""

    def __init__(self, index: Index) -> None:
        self._engine = index.engine

    def create(self, user: User, address: str, now: datetime, lifetime: timedelta) -> Session:
        """A new session for ``user``; expired sessions of anyone are removed on the way."""
        session = Session(
            token=secrets.token_urlsafe(TOKEN_BYTES),
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            user_id=user.id,
            expires_at=now + lifetime,
        )
        with self._engine.begin() as connection:
            connection.execute(delete(web_sessions).where(web_sessions.c.expires_at <= now))
            connection.execute(
                insert(web_sessions).values(
                    token_hash=_digest(session.token),
                    user_id=user.id,
                    csrf_token=session.csrf_token,
                    address=address[:64],
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return session

    def find(self, token: str, now: datetime) -> Session | None:
        """The unexpired session of a cookie token."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(web_sessions.c.user_id, web_sessions.c.csrf_token, web_sessions.c.expires_at).where(
                    web_sessions.c.token_hash == _digest(token), web_sessions.c.expires_at > now
                )
            ).first()
        if row is None:
            return None
        return Session(token=token, csrf_token=str(row[1]), user_id=int(row[0]), expires_at=row[2])

    def end(self, token: str) -> None:
        """End one session (logout)."""
        with self._engine.begin() as connection:
            connection.execute(delete(web_sessions).where(web_sessions.c.token_hash == _digest(token)))

    def end_all(self, user_id: int) -> None:
        """End every session of a user (disabled, or password reset)."""
        with self._engine.begin() as connection:
            connection.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id))
