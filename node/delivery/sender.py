"""The delivery sender: C-STORE SCU (PS3.4 Annex B) of outbox objects, with backoff and dead letters.

Each (object, destination) pair succeeds or fails on its own. A destination that answers with a
failure status, or cannot be reached, counts as a failed attempt; only Success or a Warning status
(the peer stored the object) counts as delivered. An object whose SOP class the destination did not
accept as a presentation context (PS3.8 9.3.3.2; many PACS take no Comprehensive 3D SR) is refused
for good by that destination: it is dead-lettered at once, and the destination's other objects go
on. A destination with ``tls = true`` is reached over DICOM TLS; a failed handshake is a failed
attempt like any other.

A DICOMweb destination is sent the same pairs by STOW-RS (:mod:`node.delivery.stow`), one request per
study: each object's outcome is read from the answer's Referenced and Failed SOP Sequences, so one
failed instance fails that object alone. When the destination stored none of the others because of
it (409), they are sent again at once without it. No connection, a timeout, 5xx, 408 and 429 are
failed attempts (retried with backoff); a 4xx that names no instance is a dead letter at once.

A destination holding dead letters is sent C-ECHO (a DICOMweb one an HTTP request) every
``dead_letter_probe_s``; once it answers again (an outage longer than the backoff has ended), its
dead letters other than refused objects are sent again.
"""

from __future__ import annotations

import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.clock import Clock
from node.config import AnyDestination, DeliverySettings, Destination, DicomwebDestination
from node.delivery.stow import StowClient, StowRefused, StowUnavailable, http_reason
from node.dicom.contexts import identified
from node.dicom.status import Status, stored
from node.failpoints import failpoint
from node.logging import get_logger
from node.metrics import NodeMetrics
from node.store.outbox import DueDelivery, Outbox, retry_audit

log = get_logger(__name__)


def refused_reason(sop_class_uid: str) -> str:
    """The dead letter's reason for an object whose SOP class a destination does not accept."""
    name = UID(sop_class_uid).name
    return f"destination does not accept {name}"


class ClientTLS(Protocol):
    """Client contexts for DICOM TLS destinations (:class:`node.dicom.tls.DeliveryTLS`)."""

    def tls_args(self, host: str) -> tuple[ssl.SSLContext, str]:
        """``(context, server_hostname)`` for an association to ``host``."""
        ...

    def handshake_failure(self, host: str) -> str | None:
        """Why the last handshake with ``host`` failed, if it did."""
        ...


class _NotAssociated(Exception):
    """No association with a destination; the message says why (for every pair of the batch)."""


class _NothingAccepted(Exception):
    """The destination accepted none of the proposed presentation contexts."""


@dataclass
class DeliverySender:
    """Sends due outbox pairs, one association per destination per batch.

    ``tls`` holds the client contexts (built once, at startup) for destinations with ``tls = true``;
    without it such a destination's attempts fail. ``lease`` is how long a claim holds before another
    node may take it over; the node's lease keeper renews it while the sender works.
    """

    outbox: Outbox
    settings: DeliverySettings
    calling_ae_title: str
    clock: Clock
    claimant: str
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    tls: ClientTLS | None = None
    #: The client contexts of the dead-letter probe, which runs on a loop thread of its own (a
    #: ClientTLS records each thread's last handshake failure, so the two never share one).
    probe_tls: ClientTLS | None = None
    lease: timedelta = timedelta(seconds=120)
    #: The CA bundle verifying https DICOMweb destinations that name none (``dicom.tls_ca``).
    dicomweb_ca: Path | None = None
    #: Set from a claim until its outcome is recorded. Still set at the next batch when recording
    #: failed (the index unreachable, say), so that batch first puts back the pairs still claimed
    #: under this sender's id.
    _holding: bool = field(default=False, init=False)
    #: When each destination with dead letters is next sent C-ECHO.
    _next_probe: dict[str, datetime] = field(default_factory=dict, init=False)

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
        due = self.outbox.claim_due(self.claimant, self.clock.now(), self.settings.batch_size, self.lease)
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

    def probe_dead_letters(self) -> int:
        """C-ECHO each configured destination holding dead letters (at most every probe interval);
        send its dead letters again when it answers. Returns how many pairs were put back."""
        now = self.clock.now()
        put_back = 0
        known = {destination.key: destination for destination in self.settings.destinations}
        for key in self.outbox.dead_letters(outages_only=True):
            destination = known.get(key)
            if destination is None or self._next_probe.get(key, now) > now:
                continue
            self._next_probe[key] = now + timedelta(seconds=self.settings.dead_letter_probe_s)
            if not self._answers(destination):
                continue
            audit = retry_audit(now, "node", "-", key, "destination answered again")
            ids = self.outbox.retry_dead(now, audit, destination=key, outages_only=True)
            if ids:
                put_back += len(ids)
                log.warning(
                    "destination answers again: dead letters sent again", destination=key, pairs=len(ids)
                )
        return put_back

    def _answers(self, destination: AnyDestination) -> bool:
        if isinstance(destination, DicomwebDestination):
            return self._stow_client(destination).answers()
        return self._answers_echo(destination)

    def _answers_echo(self, destination: Destination) -> bool:
        try:
            association = self._associate(destination, [Verification], self.probe_tls)
        except (_NotAssociated, _NothingAccepted):
            return False
        try:
            response = association.send_c_echo()
        except Exception:  # noqa: BLE001 - any failure of the probe means "not yet"
            return False
        finally:
            if association.is_established:
                association.release()
        return "Status" in response and int(response.Status) == Status.SUCCESS

    def _associate(
        self, destination: Destination, sop_classes: list[str], tls: ClientTLS | None
    ) -> Association:
        """An established association proposing each SOP class as its own presentation context.

        Raises
        ------
        _NotAssociated
            Rejected, unreachable, or the TLS handshake failed; the message says which.
        _NothingAccepted
            The destination accepted none of the contexts (its association was aborted).
        """
        ae = identified(AE(self.calling_ae_title))
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.timeout_s
        ae.connection_timeout = self.settings.timeout_s
        for sop_class in sop_classes:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls_args = None
        if destination.tls:
            if tls is None:
                raise _NotAssociated("TLS destination but DICOM TLS is not configured")
            tls_args = tls.tls_args(destination.host)
        association = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
        if association.is_established:
            return association
        if association.is_rejected:
            raise _NotAssociated("association rejected")
        if association.rejected_contexts and not association.accepted_contexts:
            raise _NothingAccepted
        handshake = tls.handshake_failure(destination.host) if tls_args and tls else None
        if handshake is not None:
            raise _NotAssociated(f"TLS handshake failed: {handshake}")
        raise _NotAssociated("destination unreachable")

    def _send_batch(self, destination: AnyDestination, batch: list[DueDelivery]) -> None:
        datasets: dict[int, Dataset] = {}
        for delivery in batch:
            try:
                datasets[delivery.delivery_id] = pydicom.dcmread(delivery.path)
            except Exception as error:  # noqa: BLE001 - an unreadable stored object cannot be sent
                self._dead_at_once(delivery, f"stored object unreadable: {type(error).__name__}")
        sendable = [delivery for delivery in batch if delivery.delivery_id in datasets]
        if not sendable:
            return
        if isinstance(destination, DicomwebDestination):
            self._stow_batch(destination, sendable, datasets)
            return
        classes = {d.delivery_id: str(datasets[d.delivery_id].SOPClassUID) for d in sendable}
        try:
            association = self._associate(destination, sorted(set(classes.values())), self.tls)
        except _NothingAccepted:
            for delivery in sendable:
                self._dead_at_once(delivery, refused_reason(classes[delivery.delivery_id]))
            return
        except _NotAssociated as error:
            for delivery in sendable:
                self._failed(delivery, str(error), None)
            return
        accepted = {str(context.abstract_syntax) for context in association.accepted_contexts}
        remaining = list(sendable)
        try:
            while remaining and association.is_established:
                delivery = remaining.pop(0)
                sop_class = classes[delivery.delivery_id]
                if sop_class not in accepted:
                    self._dead_at_once(delivery, refused_reason(sop_class))
                    continue
                self._store(association, destination, delivery, datasets[delivery.delivery_id])
        finally:
            if association.is_established:
                association.release()
        for delivery in remaining:
            self._failed(delivery, "association lost before sending", None)

    def _store(
        self, association: Association, destination: Destination, delivery: DueDelivery, dataset: Dataset
    ) -> None:
        """One C-STORE; whatever happens is this pair's outcome alone."""
        try:
            response = association.send_c_store(dataset)
        except Exception as error:  # noqa: BLE001 - one object's failure must not stop the batch
            self._failed(delivery, f"sending failed: {type(error).__name__}: {error}", None)
            return
        status = int(response.Status) if "Status" in response else None
        if status is not None and stored(status):
            self._delivered(delivery, status, "c-store")
        else:
            reason = "no response" if status is None else f"failure status 0x{status:04X}"
            self._failed(delivery, reason, status)

    def _stow_client(self, destination: DicomwebDestination) -> StowClient:
        return StowClient(destination, self.dicomweb_ca, destination.timeout_s or self.settings.timeout_s)

    def _stow_batch(
        self, destination: DicomwebDestination, batch: list[DueDelivery], datasets: dict[int, Dataset]
    ) -> None:
        """STOW-RS of a batch, one request per study."""
        client = self._stow_client(destination)
        by_study: dict[str, list[DueDelivery]] = defaultdict(list)
        for delivery in batch:
            by_study[str(datasets[delivery.delivery_id].StudyInstanceUID)].append(delivery)
        for study_instance_uid, deliveries in by_study.items():
            self._stow_study(client, study_instance_uid, deliveries, datasets)

    def _stow_study(
        self,
        client: StowClient,
        study_instance_uid: str,
        deliveries: list[DueDelivery],
        datasets: dict[int, Dataset],
    ) -> None:
        """One study's objects in one request; each object's outcome is its own."""
        pending = deliveries
        for resent in (False, True):
            try:
                answer = client.store([datasets[d.delivery_id] for d in pending], study_instance_uid)
            except StowUnavailable as error:
                for delivery in pending:
                    self._failed(delivery, str(error), None)
                return
            except StowRefused as error:
                for delivery in pending:
                    self._dead_at_once(delivery, f"destination refused the request: {error}")
                return
            except Exception as error:  # noqa: BLE001 - the request's failure is each object's outcome
                for delivery in pending:
                    self._failed(delivery, f"sending failed: {type(error).__name__}", None)
                return
            unconfirmed = []
            for delivery in pending:
                uid = delivery.sop_instance_uid
                if uid in answer.failed:
                    self._stow_failed(delivery, datasets[delivery.delivery_id], answer.failed[uid])
                elif uid in answer.stored or not answer.listed:
                    self._delivered(delivery, int(Status.SUCCESS), "stow-rs")
                else:
                    unconfirmed.append(delivery)
            if not unconfirmed:
                return
            if answer.http_status == HTTPStatus.CONFLICT and answer.failed and not resent:
                # The destination stored none of the request because of the failed instances (409):
                # the others go again at once, without them, and count no attempt for it.
                pending = unconfirmed
                continue
            for delivery in unconfirmed:
                reason = f"not confirmed by the destination ({http_reason(answer.http_status)})"
                self._failed(delivery, reason, None)
            return

    def _stow_failed(self, delivery: DueDelivery, dataset: Dataset, reason: int) -> None:
        """An instance the destination's Failed SOP Sequence names, with its Failure Reason.

        A reason no resend changes (SOP class not supported, a duplicate UID with other content, a
        data set that does not match its class or cannot be understood) is a dead letter at once;
        out of resources (0xA7xx) and a processing failure are retried with backoff.
        """
        if reason == Status.SOP_CLASS_NOT_SUPPORTED:
            self._dead_at_once(delivery, refused_reason(str(dataset.SOPClassUID)))
        elif reason == Status.DUPLICATE_SOP_INSTANCE or 0xA900 <= reason <= 0xA9FF or reason >> 12 == 0xC:
            self._dead_at_once(delivery, f"destination refused it: failure reason 0x{reason:04X}")
        else:
            self._failed(delivery, f"destination failure reason 0x{reason:04X}", reason)

    def _delivered(self, delivery: DueDelivery, status: int, kind: str) -> None:
        failpoint("sender:sent")
        self.metrics.delivery_attempts.inc()
        self.outbox.mark_delivered(delivery, status, self.clock.now())
        log.info("object delivered", destination=delivery.destination, kind=kind, status=status)

    def _dead_at_once(self, delivery: DueDelivery, reason: str) -> None:
        """Dead-letter a pair that no retry can deliver (a refused SOP class, an unreadable object)."""
        self.outbox.mark_refused(delivery, reason, self.clock.now())
        self.metrics.delivery_attempts.inc()
        self.metrics.delivery_failures.labels(final="true").inc()
        log.warning("delivery impossible: dead-lettered", destination=delivery.destination, reason=reason)

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
