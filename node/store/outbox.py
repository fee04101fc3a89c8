"""The outbox: objects to send are stored first, then delivered to each destination with retries.

Each (object, destination) pair has a :class:`~node.domain.DeliveryState`: pending (due at
``next_attempt_at``), sending (claimed by a sender, under a lease its node renews), delivered, or
dead (after the attempt cap, or at once when the destination refuses the object's SOP class, with the
last error). Claiming uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several node processes never
send the same pair at once; a claim whose lease ran out (its node died) is put back by any node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.config import AnyDestination
from node.domain import DeliveryState, OutboxKind
from node.store import claims
from node.store.audit import AuditAction, AuditEntry, audit_insert
from node.store.index import Index
from node.store.schema import deliveries, outbox
from node.store.spool import Spool, safe_component

#: A dead pair that an outage killed: not refused, and no DIMSE status was ever answered for it.
_OUTAGE = and_(deliveries.c.refused.is_(False), deliveries.c.last_status.is_(None))


def _claimed(delivery: DueDelivery) -> Any:
    """The pair is still sending under ``delivery``'s claim (its lease did not run out and pass to
    another node, which records the outcome then)."""
    return and_(
        deliveries.c.id == delivery.delivery_id,
        deliveries.c.state == SENDING,
        deliveries.c.claimed_by == delivery.claimant,
    )


#: Makes the audit line of a retry from the ids of the pairs put back.
Audit = Callable[[list[int]], AuditEntry]


def retry_audit(at: datetime, actor: str, address: str, target: str | None, why: str) -> Audit:
    """The audit line of dead letters sent again: who, from where, which destination, and why."""

    def entry(ids: list[int]) -> AuditEntry:
        return AuditEntry(
            at=at,
            actor=actor,
            address=address,
            action=AuditAction.DELIVERY_RETRY,
            target=target,
            details={"deliveries": ids, "why": why},
        )

    return entry


PENDING = DeliveryState.PENDING
SENDING = DeliveryState.SENDING
DELIVERED = DeliveryState.DELIVERED
DEAD = DeliveryState.DEAD


@dataclass(frozen=True)
class OutgoingObject:
    """A stored object ready to be sent."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    kind: OutboxKind
    result_id: str | None


@dataclass(frozen=True)
class DueDelivery:
    """One claimed (object, destination) pair."""

    delivery_id: int
    destination: str
    attempts: int
    path: Path
    sop_instance_uid: str
    #: Who claimed the pair; its outcome is recorded only while the claim is still this one.
    claimant: str = ""


@dataclass(frozen=True)
class DeliveryRow:
    """One (object, destination) pair as ``dicomnode deliveries list`` and the worklist show it."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    kind: OutboxKind
    result_id: str | None
    destination: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime
    delivered_at: datetime | None
    refused: bool


class Outbox:
    """Store-first outbox over the index and a spool of outgoing files."""

    def __init__(self, index: Index, spool: Spool) -> None:
        self._engine = index.engine
        self._spool = spool

    def add(
        self, item: OutgoingObject, data: bytes, destinations: Sequence[AnyDestination], now: datetime
    ) -> bool:
        """Store an object durably and schedule it for every destination that takes its kind.

        A destination whose ``send`` leaves out the object's kind (a PACS that takes no SR, say) gets
        no delivery of it; the object is stored all the same (the worklist shows it). Idempotent per
        SOP UID: returns False when the object was already in the outbox (nothing is written again).
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
                    if item.kind.report_object not in destination.send:
                        continue
                    connection.execute(
                        insert(deliveries).values(
                            outbox_id=outbox_id,
                            destination=destination.key,
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

    def claim_due(self, claimant: str, now: datetime, limit: int, lease: timedelta) -> list[DueDelivery]:
        """Claim up to ``limit`` pending pairs that are due, oldest first, leased until ``now + lease``."""
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
                .values(state=SENDING, claimed_by=claimant, lease_until=now + lease)
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
                claimant=claimant,
            )
            for row in rows
        ]

    def mark_delivered(self, delivery: DueDelivery, status: int, now: datetime) -> None:
        """Record a successful C-STORE (unless another node took the pair over meanwhile)."""
        with self._engine.begin() as connection:
            connection.execute(
                update(deliveries)
                .where(_claimed(delivery))
                .values(
                    state=DELIVERED,
                    attempts=deliveries.c.attempts + 1,
                    last_status=status,
                    last_error=None,
                    delivered_at=now,
                    claimed_by=None,
                    lease_until=None,
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
        self._record_failure(
            delivery,
            state=DEAD if dead else PENDING,
            attempts=attempts,
            next_attempt_at=now + timedelta(seconds=0 if dead else backoff(attempts)),
            status=status,
            error=error,
            refused=False,
        )
        return dead

    def mark_refused(self, delivery: DueDelivery, error: str, now: datetime) -> None:
        """Dead-letter a pair at once: retrying cannot help (the destination refuses the object's
        SOP class, or the stored object cannot be read).

        Such a pair is not brought back when the destination answers C-ECHO again; an operator may
        retry it (``dicomnode deliveries retry``) once the destination is configured to take it.
        """
        self._record_failure(
            delivery,
            state=DEAD,
            attempts=delivery.attempts + 1,
            next_attempt_at=now,
            status=None,
            error=error,
            refused=True,
        )

    def _record_failure(
        self,
        delivery: DueDelivery,
        *,
        state: DeliveryState,
        attempts: int,
        next_attempt_at: datetime,
        status: int | None,
        error: str,
        refused: bool,
    ) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(deliveries)
                .where(_claimed(delivery))
                .values(
                    state=state,
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    last_status=status,
                    last_error=error,
                    refused=refused,
                    claimed_by=None,
                    lease_until=None,
                )
            )

    def renew(self, claimant_prefix: str, until: datetime) -> int:
        """Extend the lease of the pairs this process is sending (see :func:`claims.renew`)."""
        return claims.renew(
            self._engine, deliveries, claimed=SENDING, claimant_prefix=claimant_prefix, until=until
        )

    def release_expired(self, now: datetime) -> int:
        """Put back pairs whose sender's lease ran out (its node died, on any host)."""
        return claims.release_expired(self._engine, deliveries, claimed=SENDING, released=PENDING, now=now)

    def retry(self, delivery_ids: Sequence[int], now: datetime, audit: Audit) -> list[int]:
        """Put dead pairs back to pending, due now, with their attempt count reset.

        ``audit`` makes the audit line of the ids put back; it is written in the same transaction.
        Returns the ids put back (pairs that were not dead are left alone).
        """
        if not delivery_ids:
            return []
        return self._requeue_dead(deliveries.c.id.in_(list(delivery_ids)), now, audit)

    def retry_dead(
        self, now: datetime, audit: Audit, destination: str | None = None, outages_only: bool = False
    ) -> list[int]:
        """Put back every dead pair (of one destination).

        ``outages_only``: only pairs that died of an outage (no association, so no DIMSE status),
        not those the destination refused or answered with a failure status, which would die again.
        """
        condition: Any = deliveries.c.state == DEAD
        if destination is not None:
            condition = and_(condition, deliveries.c.destination == destination)
        if outages_only:
            condition = and_(condition, _OUTAGE)
        return self._requeue_dead(condition, now, audit)

    def _requeue_dead(self, condition: Any, now: datetime, audit: Audit) -> list[int]:
        with self._engine.begin() as connection:
            ids = [
                int(row[0])
                for row in connection.execute(
                    select(deliveries.c.id).where(condition, deliveries.c.state == DEAD)
                ).all()
            ]
            if ids:
                connection.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(ids), deliveries.c.state == DEAD)
                    .values(state=PENDING, attempts=0, next_attempt_at=now, refused=False)
                )
                connection.execute(audit_insert(audit(ids)))
        return ids

    def dead_letters(self, outages_only: bool = False) -> dict[str, int]:
        """Dead pairs per destination; ``outages_only`` counts only those an outage killed."""
        condition: Any = deliveries.c.state == DEAD
        if outages_only:
            condition = and_(condition, _OUTAGE)
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(deliveries.c.destination, func.count())
                .where(condition)
                .group_by(deliveries.c.destination)
            ).all()
        return {str(destination): int(count) for destination, count in rows}

    def release_abandoned(self, is_abandoned: Callable[[str], bool]) -> int:
        """Put back pairs a killed process left in ``sending`` (they are retried; same SOP UIDs)."""
        return claims.release_abandoned(
            self._engine, deliveries, claimed=SENDING, released=PENDING, is_abandoned=is_abandoned
        )

    def rows(self, result_id: str | None = None, state: DeliveryState | None = None) -> list[DeliveryRow]:
        """Every (object, destination) pair, oldest object first; optionally one result's or state's."""
        query = (
            select(
                deliveries.c.id,
                outbox.c.sop_instance_uid,
                outbox.c.sop_class_uid,
                outbox.c.kind,
                outbox.c.result_id,
                deliveries.c.destination,
                deliveries.c.state,
                deliveries.c.attempts,
                deliveries.c.last_status,
                deliveries.c.last_error,
                deliveries.c.next_attempt_at,
                deliveries.c.delivered_at,
                deliveries.c.refused,
            )
            .join(outbox, outbox.c.id == deliveries.c.outbox_id)
            .order_by(outbox.c.id, deliveries.c.destination)
        )
        if result_id is not None:
            query = query.where(outbox.c.result_id == result_id)
        if state is not None:
            query = query.where(deliveries.c.state == state)
        with self._engine.connect() as connection:
            found = connection.execute(query).all()
        return [
            DeliveryRow(
                id=int(row[0]),
                sop_instance_uid=str(row[1]),
                sop_class_uid=str(row[2]),
                kind=OutboxKind(row[3]),
                result_id=row[4],
                destination=str(row[5]),
                state=DeliveryState(row[6]),
                attempts=int(row[7]),
                last_status=row[8],
                last_error=row[9],
                next_attempt_at=row[10],
                delivered_at=row[11],
                refused=bool(row[12]),
            )
            for row in found
        ]

    def counts(self) -> dict[str, int]:
        """Number of (object, destination) pairs per state."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
            ).all()
        return {str(state): int(count) for state, count in rows}
