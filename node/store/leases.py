"""The lease keeper: renews this process's claims and puts back claims whose lease ran out.

Claims on jobs and deliveries are leases (:mod:`node.store.claims`). One keeper per process renews
every claim of the process a third of a lease at a time, so a claim outlives its lease only when its
process stopped (killed, frozen, or its host gone for good); any node then puts the work back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from node.clock import Clock
from node.domain import Outcome
from node.logging import get_logger
from node.metrics import NodeMetrics
from node.store.claims import process_claimant_prefix
from node.store.jobs import JobQueue
from node.store.outbox import Outbox

log = get_logger(__name__)


class LeaseKeeper:
    """A background step (see :class:`node.background.BackgroundLoops`)."""

    def __init__(
        self,
        queue: JobQueue,
        outbox: Outbox,
        clock: Clock,
        lease: timedelta,
        max_attempts: int,
        metrics: NodeMetrics,
    ) -> None:
        self._queue = queue
        self._outbox = outbox
        self._clock = clock
        self._lease = lease
        self._max_attempts = max_attempts
        self._metrics = metrics
        self._prefix = process_claimant_prefix()
        self._next: datetime | None = None

    def step(self) -> bool:
        """Renew and put back, at most once every third of a lease; never busy."""
        now = self._clock.now()
        if self._next is not None and now < self._next:
            return False
        until = now + self._lease
        self._queue.renew(self._prefix, until)
        self._outbox.renew(self._prefix, until)
        self._next = now + self._lease / 3  # only once renewed: a failed renewal is tried at once
        requeued, given_up = self._queue.requeue_expired(self._max_attempts, now)
        released = self._outbox.release_expired(now)
        if requeued or released:
            log.warning(
                "took over work whose node stopped renewing its claim", jobs=requeued, deliveries=released
            )
        if given_up:
            self._metrics.studies_processed.labels(outcome=str(Outcome.FAILED)).inc(given_up)
            log.error("jobs failed: their node stopped while processing them at every attempt", jobs=given_up)
        return False
