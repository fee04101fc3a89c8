"""Failed-login back-off, per user name and per client address, kept in the index.

After ``free_failures`` consecutive failures of a key, every further failure blocks that key for an
exponentially growing time (:meth:`node.config.AuthSettings.backoff`). Attempts on a blocked key are
refused without checking the password, so guessing gets slower whatever the attacker varies. Time
comes from the caller (``now``), so tests move a manual clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from node.config import AuthSettings
from node.store.index import Index
from node.store.schema import login_failures


def user_key(name: str) -> str:
    """The back-off key of a user name (case-folded: ``Alice`` and ``alice`` share a count)."""
    return f"user:{name.strip().casefold()[:150]}"


def address_key(address: str) -> str:
    """The back-off key of a client address."""
    return f"address:{address[:150]}"


class LoginBackoff:
    """Counts consecutive failures per key and says how long a key is still blocked."""

    def __init__(self, index: Index, settings: AuthSettings) -> None:
        self._engine = index.engine
        self._settings = settings

    def blocked_for(self, keys: Sequence[str], now: datetime) -> float:
        """Seconds until every one of ``keys`` may try again (0 when none is blocked)."""
        with self._engine.connect() as connection:
            until = connection.execute(
                select(login_failures.c.blocked_until).where(login_failures.c.key.in_(list(keys)))
            ).scalars()
            waits = [float((moment - now).total_seconds()) for moment in until]
        return max([*waits, 0.0])

    def failed(self, keys: Sequence[str], now: datetime) -> None:
        """Count one failure against every key and block the keys that are over the free count."""
        forget_before = now - timedelta(seconds=self._settings.reset_after_s)
        for key in keys:
            with self._engine.begin() as connection:
                connection.execute(
                    self._insert_ignore().values(key=key, failures=0, last_failure_at=now, blocked_until=now)
                )
                failures, last = connection.execute(
                    select(login_failures.c.failures, login_failures.c.last_failure_at)
                    .where(login_failures.c.key == key)
                    .with_for_update()
                ).one()
                failures = 1 if last < forget_before else int(failures) + 1
                connection.execute(
                    update(login_failures)
                    .where(login_failures.c.key == key)
                    .values(
                        failures=failures,
                        last_failure_at=now,
                        blocked_until=now + timedelta(seconds=self._settings.backoff(failures)),
                    )
                )

    def _insert_ignore(self) -> Any:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(login_failures).on_conflict_do_nothing(index_elements=["key"])
        return sqlite.insert(login_failures).on_conflict_do_nothing(index_elements=["key"])

    def succeeded(self, key: str) -> None:
        """Forget a key's failures (a correct password for that user)."""
        with self._engine.begin() as connection:
            connection.execute(delete(login_failures).where(login_failures.c.key == key))
