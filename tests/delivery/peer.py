"""A real storage SCP on loopback (pynetdicom) that records what it receives, for delivery tests."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom.status import Status
from node.domain import OutboxKind, ReportObject
from node.store.outbox import OutgoingObject
from tests.support import STORESCP, dcmtk_env, port_accepts, wait_for


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
        ae.add_supported_context(Verification)
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


def outgoing_object(
    study_uid: str,
    sop_class: str = SecondaryCaptureImageStorage,
    kind: OutboxKind = OutboxKind.SC,
    result_id: str | None = None,
) -> tuple[OutgoingObject, bytes]:
    """A small, valid instance of ``sop_class`` as Part 10 bytes, with its outbox record."""
    dataset = Dataset()
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "SR" if kind.report_object == ReportObject.SR else "OT"
    dataset.PatientName = "TEST^DELIVERY"
    dataset.PatientID = "DELIVERY-1"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    item = OutgoingObject(
        sop_instance_uid=str(dataset.SOPInstanceUID),
        sop_class_uid=str(dataset.SOPClassUID),
        study_instance_uid=study_uid,
        kind=kind,
        result_id=result_id,
    )
    return item, buffer.getvalue()


#: A DCMTK storescp configuration (``--config-file FILE PROFILE``) with two profiles: ``NoSR`` takes
#: Verification and Secondary Capture only (many PACS take no Comprehensive 3D SR); ``EchoOnly``
#: takes Verification alone.
STORESCP_PROFILES = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[NoSR]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = SecondaryCaptureImageStorage\\Uncompressed
[EchoOnly]
PresentationContext1 = VerificationSOPClass\\Uncompressed
[[Profiles]]
[NoSR]
PresentationContexts = NoSR
[EchoOnly]
PresentationContexts = EchoOnly
"""


@contextmanager
def picky_storescp(work: Path, port: int, profile: str, ae_title: str = "PACS") -> Iterator[Path]:
    """DCMTK storescp on ``port`` with one of :data:`STORESCP_PROFILES`; yields the folder it stores in."""
    if not Path(STORESCP).exists():
        pytest.skip("DCMTK storescp is not installed (apt-get install dcmtk)")
    config = work / "storescp.cfg"
    config.write_text(STORESCP_PROFILES, encoding="ascii")
    out = work / f"storescp-{profile}"
    out.mkdir()
    command = [STORESCP, "--config-file", str(config), profile, "-aet", ae_title, "-od", str(out), str(port)]
    process = subprocess.Popen(command, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: port_accepts(port) or process.poll() is not None, 20, "storescp to listen")
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited: {process.stderr.read().decode() if process.stderr else ''}")
        yield out
    finally:
        process.terminate()
        process.wait(timeout=10)
