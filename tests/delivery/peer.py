"""A real storage SCP on loopback (pynetdicom) that records what it receives, for delivery tests."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from node.status import Status


@dataclass
class RecordingSCP:
    """Accepts every storage SOP class; answers ``status``; records received SOP Instance UIDs.

    With ``ssl_context`` it serves DICOM TLS.
    """

    port: int
    ae_title: str = "PACS"
    status: int = Status.SUCCESS
    received: list[str] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    ssl_context: ssl.SSLContext | None = None
    _server: ThreadedAssociationServer | None = None

    def start(self) -> RecordingSCP:
        ae = AE(self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.append(str(dataset.SOPInstanceUID))
        self.datasets.append(dataset)
        self.arrived.set()
        return int(self.status)
