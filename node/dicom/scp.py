"""The storage SCP: Verification and C-STORE, thin handlers over :class:`~node.store.ingest.Ingest`.

Handlers run on association threads and only check, store durably, index and answer; nothing
slower happens here. Callers outside ``allowed_callers`` are rejected at association (PS3.8 7.1.1.9,
"calling AE title not recognized").
"""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from node.clock import monotonic
from node.config import CallerRule, DicomSettings
from node.dicom.contexts import storage_contexts
from node.errors import NodeError
from node.logging import Pseudonymiser, get_logger
from node.metrics import NodeMetrics
from node.status import Status
from node.store.ingest import Ingest

log = get_logger(__name__)

#: Returned as the only allowed AE title when no rule admits the caller's host; it cannot match a
#: real calling AE title because AE titles never contain a backslash (PS3.5 Table 6.2-1).
_NOBODY = "\\"


class _NodeAE(AE):
    """An AE whose calling-AE allow-list also considers the caller's address."""

    def __init__(self, ae_title: str, rules: list[CallerRule]) -> None:
        self._rules: list[CallerRule] = []
        super().__init__(ae_title)
        self._rules = rules

    @property
    def require_calling_aet(self) -> list[str]:
        """AE titles allowed for the association being negotiated on this thread."""
        if not self._rules:
            return []
        current = threading.current_thread()
        address = current.requestor.address if isinstance(current, Association) else ""
        titles = [rule.ae_title for rule in self._rules if rule.host is None or rule.host == address]
        return titles or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self._rules = [CallerRule(ae_title=title) for title in ae_titles]


class _NoDelayServer(ThreadedAssociationServer):
    """Association server that disables Nagle on accepted sockets (small PDUs are not delayed)."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


@dataclass
class _Counts:
    association_id: str
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


class StorageSCP:
    """Owns the pynetdicom AE and server for the node's listener."""

    def __init__(
        self,
        settings: DicomSettings,
        ingest: Ingest,
        pseudonymise: Pseudonymiser,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or NodeMetrics()
        self._ingest = ingest
        self._pseudonymise = pseudonymise
        self._counts: dict[int, _Counts] = {}
        self._lock = threading.Lock()
        ae = _NodeAE(settings.ae_title, list(settings.allowed_callers))
        ae.supported_contexts = storage_contexts()
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.network_timeout = settings.network_timeout_s
        ae.acse_timeout = settings.acse_timeout_s
        ae.dimse_timeout = settings.dimse_timeout_s
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread."""
        handlers: list[Any] = [
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = self._ae.make_server(
            (self._settings.host, self._settings.port),
            evt_handlers=handlers,
            server_class=_NoDelayServer,
        )
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        self._ae._servers.append(server)  # so AE.active_associations sees this server
        self._server = server
        log.info("listening", ae_title=self._settings.ae_title, host=self._settings.host, port=self.port)

    def stop(self, grace_s: float) -> None:
        """Stop accepting, let established associations finish within ``grace_s``, abort the rest.

        A connection that has not negotiated an association (a TCP health check, a port scan) has
        nothing in flight and is not waited for; ``grace_s`` bounds the whole wait, not each join.
        """
        server = self._server
        if server is None:
            return
        server.shutdown()  # no new connections from here on
        deadline = monotonic() + grace_s
        active = list(server.active_associations)
        established = [a for a in active if a.is_established]
        for association in established:
            association.join(timeout=max(0.0, deadline - monotonic()))
        unfinished = [a for a in established if a.is_alive()]
        for association in [a for a in active if a.is_alive()]:
            association.abort()
        self._server = None
        log.info("listener stopped", unfinished_associations=len(unfinished))

    # -- event handlers (association threads) ------------------------------------------------------

    def _on_accepted(self, event: evt.Event) -> None:
        association_id = uuid.uuid4().hex[:12]
        requestor = event.assoc.requestor
        structlog.contextvars.bind_contextvars(
            association_id=association_id,
            calling_ae=str(requestor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
        )
        with self._lock:
            self._counts[id(event.assoc)] = _Counts(association_id)
        self._metrics.associations.labels(outcome="accepted").inc()
        log.info("association accepted")

    def _on_rejected(self, event: evt.Event) -> None:
        self._metrics.associations.labels(outcome="rejected").inc()
        requestor = event.assoc.requestor
        log.warning(
            "association rejected",
            calling_ae=str(requestor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
        )

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            counts = self._counts.pop(id(event.assoc), None)
        if counts is not None:
            log.info(
                "association closed",
                how=event.event.name,
                stored=counts.stored,
                duplicates=counts.duplicates,
                refused=counts.refused,
            )
        structlog.contextvars.clear_contextvars()

    def _on_echo(self, _event: evt.Event) -> int:
        return int(Status.SUCCESS)

    def _count(self, counts: _Counts | None, outcome: str) -> None:
        """Count one C-STORE outcome for the association's log line and for /metrics."""
        self._metrics.instances_received.labels(outcome=outcome).inc()
        if counts is None:
            return
        if outcome == "stored":
            counts.stored += 1
        elif outcome == "duplicate":
            counts.duplicates += 1
        else:
            counts.refused += 1

    def _on_store(self, event: evt.Event) -> int:
        counts = self._counts.get(id(event.assoc))
        request = cast(C_STORE, event.request)
        try:
            stored = self._ingest.store(
                event.encoded_dataset(include_meta=True),
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
                expected_sop_class=str(request.AffectedSOPClassUID),
                expected_sop_instance=str(request.AffectedSOPInstanceUID),
            )
        except NodeError as error:
            self._count(counts, "refused")
            log.warning("instance refused", status=f"0x{int(error.status):04X}", reason=str(error))
            return int(error.status)
        except Exception:
            self._count(counts, "refused")
            log.exception("instance failed", status=f"0x{int(Status.PROCESSING_FAILURE):04X}")
            return int(Status.PROCESSING_FAILURE)
        self._count(counts, "duplicate" if stored.duplicate else "stored")
        log.info(
            "instance stored",
            study=self._pseudonymise(stored.header.study_instance_uid),
            patient=self._pseudonymise(stored.header.patient_id or ""),
            duplicate=stored.duplicate,
        )
        return int(Status.SUCCESS)
