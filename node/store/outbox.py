"""The outbox: objects to send are stored first, then delivered to each destination with retries.

Each (object, destination) pair has a state: pending (due at ``next_attempt_at``), sending (claimed
by a sender), delivered, or dead (after the attempt cap, with the last error). Claiming uses
``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several node processes never send the same pair at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.store.claims import release_abandoned
from node.store.index import Index
from node.store.schema import deliveries, outbox
from node.store.spool import Spool, safe_component

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
DEAD = "dead"


@dataclass(frozen=True)
class OutgoingObject:
    """A stored object ready to be sent."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    kind: str
    result_id: str | None


@dataclass(frozen=True)
class DueDelivery:
    """One claimed (object, destination) pair."""

    delivery_id: int
    destination: str
    attempts: int
    path: Path
    sop_instance_uid: str


class Outbox:
    """Store-first outbox over the index and a spool of outgoing files."""

    def __init__(self, index: Index, spool: Spool) -> None:
        self._engine = index.engine
        self._spool = spool

    def add(self, item: OutgoingObject, data: bytes, destinations: Sequence[str], now: datetime) -> bool:
        """Store an object durably and schedule it for every destination; idempotent per SOP UID.

        Returns False when the object was already in the outbox (nothing is written again).
        """
        if self.contains(item.sop_instance_uid):
            return False
        relative = Path(
            safe_component(item.study_instance_uid), safe_component(item.sop_instance_uid) + ".dcm"
        )
        self._spool.write(relative, data)
        try:
            with self._engine.begin() as connection:
                outbox_id = connection.execute(
                    insert(outbox)
                    .values(
                        sop_instance_uid=item.sop_instance_uid,
                        sop_class_uid=item.sop_class_uid,
                        study_instance_uid=item.study_instance_uid,
                        result_id=item.result_id,
                        kind=item.kind,
                        path=relative.as_posix(),
                        created_at=now,
                    )
                    .returning(outbox.c.id)
                ).scalar_one()
                for destination in destinations:
                    connection.execute(
                        insert(deliveries).values(
                            outbox_id=outbox_id,
                            destination=destination,
                            state=PENDING,
                            attempts=0,
                            next_attempt_at=now,
                        )
                    )
        except IntegrityError:
            return False  # added concurrently by another process
        return True

    def contains(self, sop_instance_uid: str) -> bool:
        """Whether an object with this SOP Instance UID is in the outbox."""
        with self._engine.connect() as connection:
            found = connection.execute(
                select(outbox.c.id).where(outbox.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return found is not None

    def claim_due(self, claimant: str, now: datetime, limit: int) -> list[DueDelivery]:
        """Claim up to ``limit`` pending pairs that are due, oldest first."""
        due = (
            select(deliveries.c.id)
            .where(deliveries.c.state == PENDING, deliveries.c.next_attempt_at <= now)
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._engine.begin() as connection:
            ids = [row[0] for row in connection.execute(due).all()]
            if not ids:
                return []
            connection.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids), deliveries.c.state == PENDING)
                .values(state=SENDING, claimed_by=claimant)
            )
            rows = connection.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.destination,
                    deliveries.c.attempts,
                    outbox.c.path,
                    outbox.c.sop_instance_uid,
                )
                .join(outbox, outbox.c.id == deliveries.c.outbox_id)
                .where(deliveries.c.id.in_(ids), deliveries.c.claimed_by == claimant)
                .order_by(deliveries.c.id)
            ).all()
        return [
            DueDelivery(
                delivery_id=int(row[0]),
                destination=str(row[1]),
                attempts=int(row[2]),
                path=self._spool.root / str(row[3]),
                sop_instance_uid=str(row[4]),
            )
            for row in rows
        ]

    def mark_delivered(self, delivery: DueDelivery, status: int, now: datetime) -> None:
        """Record a successful C-STORE."""
        with self._engine.begin() as connection:
            connection.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery.delivery_id)
                .values(
                    state=DELIVERED,
                    attempts=deliveries.c.attempts + 1,
                    last_status=status,
                    last_error=None,
                    delivered_at=now,
                    claimed_by=None,
                )
            )

    def mark_failed(
        self,
        delivery: DueDelivery,
        error: str,
        status: int | None,
        now: datetime,
        max_attempts: int,
        backoff: Callable[[int], float],
    ) -> bool:
        """Record a failed attempt; retry after ``backoff(attempts)`` s, or dead-letter at the cap.

        Returns True when the pair is now dead.
        """
        attempts = delivery.attempts + 1
        dead = attempts >= max_attempts
        with self._engine.begin() as connection:
            connection.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery.delivery_id)
                .values(
                    state=DEAD if dead else PENDING,
                    attempts=attempts,
                    next_attempt_at=now + timedelta(seconds=0 if dead else backoff(attempts)),
                    last_status=status,
                    last_error=error,
                    claimed_by=None,
                )
            )
        return dead

    def release_abandoned(self, is_abandoned: Callable[[str], bool]) -> int:
        """Put back pairs a killed process left in ``sending`` (they are retried; same SOP UIDs)."""
        return release_abandoned(
            self._engine, deliveries, claimed=SENDING, released=PENDING, is_abandoned=is_abandoned
        )

    def delivery_states(self, result_id: str | None = None) -> list[dict[str, Any]]:
        """Delivery state per object and destination (optionally of one result), for the worklist."""
        query = (
            select(
                outbox.c.sop_instance_uid,
                outbox.c.kind,
                outbox.c.result_id,
                deliveries.c.destination,
                deliveries.c.state,
                deliveries.c.attempts,
                deliveries.c.last_status,
                deliveries.c.last_error,
                deliveries.c.next_attempt_at,
                deliveries.c.delivered_at,
            )
            .join(outbox, outbox.c.id == deliveries.c.outbox_id)
            .order_by(outbox.c.id, deliveries.c.destination)
        )
        if result_id is not None:
            query = query.where(outbox.c.result_id == result_id)
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings().all()]

    def counts(self) -> dict[str, int]:
        """Number of (object, destination) pairs per state."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
            ).all()
        return {str(state): int(count) for state, count in rows}
