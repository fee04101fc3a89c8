"""The delivery sender: C-STORE SCU (PS3.4 Annex B) of outbox objects, with backoff and dead letters.

A destination that answers with a failure status, or cannot be reached, counts as a failed
attempt; only Success or a Warning status (the peer stored the object) counts as delivered. A
destination with ``tls = true`` is reached over DICOM TLS; a failed handshake is a failed attempt
like any other.
"""

from __future__ import annotations

import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from node.clock import Clock
from node.config import DeliverySettings, Destination
from node.failpoints import failpoint
from node.logging import get_logger
from node.metrics import NodeMetrics
from node.status import Status
from node.store.outbox import DueDelivery, Outbox

log = get_logger(__name__)

#: C-STORE warning statuses (PS3.4 Table B.2-1): the object was stored, with a remark.
_STORED_WITH_WARNING = frozenset({0xB000, 0xB006, 0xB007})


def is_stored(status: int) -> bool:
    """Whether a C-STORE response status means the peer stored the object."""
    return status == Status.SUCCESS or status in _STORED_WITH_WARNING


class ClientTLS(Protocol):
    """Client contexts for DICOM TLS destinations (:class:`node.dicom.tls.DeliveryTLS`)."""

    def tls_args(self, host: str) -> tuple[ssl.SSLContext, str]:
        """``(context, server_hostname)`` for an association to ``host``."""
        ...

    def handshake_failure(self, host: str) -> str | None:
        """Why the last handshake with ``host`` failed, if it did."""
        ...


@dataclass
class DeliverySender:
    """Sends due outbox pairs, one association per destination per batch.

    ``tls`` holds the client contexts (built once, at startup) for destinations with ``tls = true``;
    without it such a destination's attempts fail.
    """

    outbox: Outbox
    settings: DeliverySettings
    calling_ae_title: str
    clock: Clock
    claimant: str
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    tls: ClientTLS | None = None
    #: Set from a claim until its outcome is recorded. Still set at the next batch when recording
    #: failed (the index unreachable, say), so that batch first puts back the pairs still claimed
    #: under this sender's id.
    _holding: bool = field(default=False, init=False)

    def run_once(self) -> int:
        """Send one batch of due pairs; returns how many were attempted."""
        if self._holding:
            # Between batches this sender holds no pair, so whatever is still claimed under its id
            # was left by a batch whose outcome the index could not record: it is sent again.
            released = self.outbox.release_abandoned(lambda claimant: claimant == self.claimant)
            self._holding = False
            if released:
                log.warning("delivery outcome could not be recorded: pairs put back", pairs=released)
        self._holding = True  # from the claim: a claim's commit can succeed although its call fails
        due = self.outbox.claim_due(self.claimant, self.clock.now(), self.settings.batch_size)
        if not due:
            self._holding = False
            return 0
        by_destination: dict[str, list[DueDelivery]] = defaultdict(list)
        for delivery in due:
            by_destination[delivery.destination].append(delivery)
        known = {destination.key: destination for destination in self.settings.destinations}
        for key, batch in by_destination.items():
            destination = known.get(key)
            if destination is None:
                for delivery in batch:
                    self._failed(delivery, "destination no longer configured", None)
                continue
            self._send_batch(destination, batch)
        self._holding = False
        return len(due)

    def _send_batch(self, destination: Destination, batch: list[DueDelivery]) -> None:
        datasets = {}
        for delivery in batch:
            try:
                datasets[delivery.delivery_id] = pydicom.dcmread(delivery.path)
            except Exception as error:  # noqa: BLE001 - an unreadable stored object is a failed attempt
                self._failed(delivery, f"stored object unreadable: {type(error).__name__}", None)
        sendable = [delivery for delivery in batch if delivery.delivery_id in datasets]
        if not sendable:
            return
        ae = AE(self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.timeout_s
        ae.connection_timeout = self.settings.timeout_s
        for sop_class in sorted({str(datasets[d.delivery_id].SOPClassUID) for d in sendable}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls_args = None
        if destination.tls:
            if self.tls is None:
                for delivery in sendable:
                    self._failed(delivery, "TLS destination but DICOM TLS is not configured", None)
                return
            tls_args = self.tls.tls_args(destination.host)
        association = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
        if not association.is_established:
            handshake = self.tls.handshake_failure(destination.host) if tls_args and self.tls else None
            if association.is_rejected:
                reason = "association rejected"
            elif handshake is not None:
                reason = f"TLS handshake failed: {handshake}"
            else:
                reason = "destination unreachable"
            for delivery in sendable:
                self._failed(delivery, reason, None)
            return
        handled: set[int] = set()
        try:
            for delivery in sendable:
                handled.add(delivery.delivery_id)
                response = association.send_c_store(datasets[delivery.delivery_id])
                status = int(response.Status) if "Status" in response else None
                if status is not None and is_stored(status):
                    failpoint("sender:sent")
                    self.metrics.delivery_attempts.inc()
                    self.outbox.mark_delivered(delivery, status, self.clock.now())
                    log.info("object delivered", destination=destination.key, kind="c-store", status=status)
                else:
                    reason = "no response" if status is None else f"failure status 0x{status:04X}"
                    self._failed(delivery, reason, status)
                if not association.is_established:
                    break
        finally:
            if association.is_established:
                association.release()
        for delivery in sendable:
            if delivery.delivery_id not in handled:
                self._failed(delivery, "association lost before sending", None)

    def _failed(self, delivery: DueDelivery, reason: str, status: int | None) -> None:
        dead = self.outbox.mark_failed(
            delivery, reason, status, self.clock.now(), self.settings.max_attempts, self.settings.backoff
        )
        self.metrics.delivery_attempts.inc()
        self.metrics.delivery_failures.labels(final=str(dead).lower()).inc()
        log.warning(
            "delivery attempt failed",
            destination=delivery.destination,
            attempt=delivery.attempts + 1,
            dead_letter=dead,
            reason=reason,
        )
