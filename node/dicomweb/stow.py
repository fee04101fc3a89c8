"""STOW-RS in, apart from HTTP (PS3.18 10.5): the parts of a multipart body as they stream in, each
stored through the node's ingest, and the Store Instances Response that names each instance's fate.

The route (:mod:`node.web.stow`) feeds the body and sends the answer; everything a part's fate depends
on is here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus
from io import BytesIO
from typing import Final
from xml.etree.ElementTree import Element, SubElement, tostring

import pydicom
from pydicom.dataset import Dataset
from python_multipart.multipart import MultipartParser

from node.accounts.tokens import TokenStore
from node.dicom.scp import InstanceSink
from node.dicom.status import Status, dimse_status
from node.errors import NodeError
from node.logging import get_logger
from node.metrics import NodeMetrics
from node.store.audit import AuditLog

log = get_logger(__name__)

DICOM: Final = "application/dicom"
#: A part's headers (Content-Type and the like) are a few lines; more is not a DICOM part.
MAX_PART_HEADER_BYTES: Final = 8192
DICOM_JSON: Final = "application/dicom+json"
DICOM_XML: Final = "application/dicom+xml"

#: The HTTP statuses of a STOW-RS answer (PS3.18 Table 10.5.3-1) and when the node gives each.
STOW_ANSWERS: Final = {
    HTTPStatus.OK: "every instance stored",
    HTTPStatus.ACCEPTED: "some stored, some failed (each named with its Failure Reason)",
    HTTPStatus.BAD_REQUEST: "no multipart boundary, or no part at all",
    HTTPStatus.UNAUTHORIZED: "no API token, or an unknown or revoked one (audited)",
    HTTPStatus.CONFLICT: "none stored (each named with its Failure Reason)",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "the body is longer than the node takes (none of it stored)",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "not multipart/related of application/dicom parts",
    HTTPStatus.SERVICE_UNAVAILABLE: "none stored: out of resources for now (disk, backlog, index); "
    "Retry-After is set",
}


@dataclass(frozen=True)
class StowIngest:
    """What the STOW-RS routes work with.

    ``requests`` bounds the bodies read at once (``web.stow_max_requests``); each holds at most one
    part of ``max_instance_bytes``.
    """

    sink: InstanceSink
    tokens: TokenStore
    audit: AuditLog
    metrics: NodeMetrics
    max_request_bytes: int
    max_instance_bytes: int
    requests: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))


@dataclass(frozen=True)
class PartOutcome:
    """One part's fate: stored (``failure`` None) or failed with a Failure Reason.

    ``transient``: the node could not take it now (disk, backlog), and may later.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure: Status | None = None
    duplicate: bool = False
    transient: bool = False


@dataclass
class Part:
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)
    oversized: bool = False


class MultipartStream:
    """The parts of a multipart body as they complete, each held only up to ``limit`` bytes."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self._limit = limit
        self._current: Part | None = None
        self._header_bytes = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self.done: list[Part] = []
        self.ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_header_field": lambda data, start, end: self._header(self._header_name, data[start:end]),
                "on_header_value": lambda data, start, end: self._header(self._header_value, data[start:end]),
                "on_header_end": self._header_end,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_end": self._finished,
            },
        )

    def write(self, chunk: bytes) -> None:
        """Feed bytes of the body; raises ``python_multipart`` errors for a malformed body."""
        self._parser.write(chunk)

    def take(self) -> list[Part]:
        """The parts completed since the last call."""
        done, self.done = self.done, []
        return done

    @property
    def cut_short(self) -> Part | None:
        """The part the body ended inside of (a truncated body), if any."""
        return self._current

    def _begin(self) -> None:
        self._current = Part()
        self._header_bytes = 0

    def _header(self, into: bytearray, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ValueError(f"part headers longer than {MAX_PART_HEADER_BYTES} bytes")
        into.extend(data)

    def _header_end(self) -> None:
        if self._current is not None and bytes(self._header_name).strip().lower() == b"content-type":
            self._current.content_type = bytes(self._header_value).decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None or part.oversized:
            return
        if len(part.data) + (end - start) > self._limit:
            part.oversized = True
            part.data = bytearray()  # drained from here on, never held
            return
        part.data.extend(data[start:end])

    def _end(self) -> None:
        if self._current is not None:
            self.done.append(self._current)
        self._current = None

    def _finished(self) -> None:
        self.ended = True


def _uids(data: bytes | bytearray) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs of a part that failed, as far as they can be read."""
    try:
        dataset = pydicom.dcmread(
            BytesIO(bytes(data)), force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        return (
            str(dataset.SOPClassUID) if "SOPClassUID" in dataset else None,
            str(dataset.SOPInstanceUID) if "SOPInstanceUID" in dataset else None,
        )
    except Exception:  # noqa: BLE001 - whatever cannot be read is left out of the answer
        return None, None


def failed(part: Part, failure: Status) -> PartOutcome:
    sop_class, sop_instance = _uids(part.data)
    return PartOutcome(sop_class, sop_instance, failure)


def store_part(stow: StowIngest, part: Part, study: str | None) -> PartOutcome:
    """Store one whole part through the ingest; the outcome says how it went."""
    media = (part.content_type or DICOM).split(";")[0].strip().lower()
    if media != DICOM:
        return failed(part, Status.CANNOT_UNDERSTAND)
    if part.oversized:
        return PartOutcome(None, None, Status.OUT_OF_RESOURCES)
    data = bytes(part.data)
    part.data = bytearray()  # one copy held, not two
    try:
        stored = stow.sink.store(data, expected_study=study)
    except NodeError as error:
        log.warning("STOW-RS instance refused", reason=str(error))
        sop_class, sop_instance = _uids(data)
        status = dimse_status(error)
        return PartOutcome(sop_class, sop_instance, status, transient=status == Status.OUT_OF_RESOURCES)
    except Exception:
        log.exception("STOW-RS instance failed")
        sop_class, sop_instance = _uids(data)
        return PartOutcome(sop_class, sop_instance, Status.PROCESSING_FAILURE)
    header = stored.header
    return PartOutcome(header.sop_class_uid, header.sop_instance_uid, None, stored.duplicate)


def answer_dataset(outcomes: list[PartOutcome]) -> Dataset:
    """The PS3.18 Store Instances Response Module of ``outcomes``."""
    answer = Dataset()
    referenced = []
    failed = []
    for outcome in outcomes:
        item = Dataset()
        if outcome.sop_class_uid is not None:
            item.ReferencedSOPClassUID = outcome.sop_class_uid
        if outcome.sop_instance_uid is not None:
            item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
        if outcome.failure is None:
            referenced.append(item)
        else:
            item.FailureReason = int(outcome.failure)
            failed.append(item)
    answer.ReferencedSOPSequence = referenced
    answer.FailedSOPSequence = failed
    return answer


def native_xml(dataset: Dataset) -> bytes:
    """``dataset`` in the PS3.19 Native DICOM Model (the XML a STOW-RS client may ask for)."""
    root = Element("NativeDicomModel", xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM")
    _xml_elements(root, dataset)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root)


def _xml_elements(parent: Element, dataset: Dataset) -> None:
    for element in dataset:
        attribute = SubElement(
            parent,
            "DicomAttribute",
            {"tag": f"{element.tag:08X}", "vr": element.VR, "keyword": element.keyword},
        )
        if element.VR == "SQ":
            for number, item in enumerate(element.value, start=1):
                _xml_elements(SubElement(attribute, "Item", number=str(number)), item)
            continue
        values = element.value if element.VM > 1 else [element.value]
        for number, value in enumerate(values, start=1):
            SubElement(attribute, "Value", number=str(number)).text = str(value)


def http_status(outcomes: list[PartOutcome]) -> HTTPStatus:
    """PS3.18 Table 10.5.3-1 for the request's outcomes."""
    failures = [outcome.failure for outcome in outcomes if outcome.failure is not None]
    if not failures:
        return HTTPStatus.OK
    if len(failures) < len(outcomes):
        return HTTPStatus.ACCEPTED
    if all(outcome.transient for outcome in outcomes):
        return HTTPStatus.SERVICE_UNAVAILABLE
    return HTTPStatus.CONFLICT
