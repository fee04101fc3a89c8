"""Parse a received instance once: check it is whole, and extract the header fields the index keeps.

pydicom reads truncated data without complaint, so the checks here are explicit: every top-level
element holds as many bytes as it declares, no bytes are left after the last whole element, an image
has pixel data, native pixel data is at least Rows x Columns x frames, encapsulated pixel data is a
whole sequence of items (PS3.5 A.4), and the identifying UIDs exist.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from node.errors import MalformedInstance, SopClassMismatch

# Real-world headers break PS3.5 (UIDs with leading zeros, dates like 20120000). The node must accept
# them, and pydicom's warnings would print the offending values (identifiers) to the log.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_FLOAT_PIXEL_DATA = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))
_DELIMITATION_ITEM_BYTES = 8
_UNDEFINED = 0xFFFFFFFF
_T = TypeVar("_T")


@dataclass(frozen=True)
class InstanceHeader:
    """What the node needs to know about one stored instance, without its pixels."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    frame_of_reference_uid: str | None
    image_type: tuple[str, ...]
    series_number: int | None
    instance_number: int | None
    acquisition_number: int | None
    acquisition_time: str | None
    trigger_time: float | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    series_description: str | None
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None


def _value(dataset: Dataset, keyword: str, convert: Callable[[Any], _T]) -> _T | None:
    """An attribute converted, or None when absent, empty or not convertible (never raises)."""
    try:
        raw = dataset.get(keyword)
        if raw is None or raw == "":
            return None
        return convert(raw)
    except Exception:  # noqa: BLE001 - any malformed value is treated as absent
        return None


def _text(value: Any) -> str:
    return str(value).strip()


def _floats(count: int) -> Callable[[Any], tuple[float, ...]]:
    def convert(value: Any) -> tuple[float, ...]:
        numbers = tuple(float(v) for v in value)
        if len(numbers) != count:
            raise ValueError(f"expected {count} values")
        return numbers

    return convert


def _check_element_lengths(dataset: Dataset) -> None:
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and length not in (None, _UNDEFINED) and len(value) < length:
            raise MalformedInstance(f"element {tag} holds {len(value)} of {length} declared bytes")


def _check_fully_read(dataset: Dataset, size: int, transfer_syntax: UID) -> None:
    """Check the last top-level element ends where the data ends.

    pydicom stops reading without a word at an element header cut short (fewer than 8 bytes left)
    or at a stray delimiter, so a dataset truncated between elements would otherwise look whole.
    """
    if transfer_syntax.is_deflated:
        return  # element offsets refer to the inflated stream
    last_start = -1
    last_end: int | None = None
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag)
        start = getattr(element, "value_tell", None)  # a raw element
        if start is None:
            start = getattr(element, "file_tell", None)  # a sequence parsed while reading
        if not isinstance(start, int):
            return  # an element of unknown position: the end cannot be told
        if start <= last_start:
            continue
        last_start = start
        length = getattr(element, "length", None)
        value = getattr(element, "value", None)
        if isinstance(length, int) and length != _UNDEFINED:
            last_end = start + length
        elif isinstance(length, int) and isinstance(value, bytes):  # read up to its delimiter
            last_end = start + len(value) + _DELIMITATION_ITEM_BYTES
        else:
            last_end = None  # a sequence of undefined length: its end is not known here
    if last_end is not None and last_end < size:
        raise MalformedInstance(f"{size - last_end} bytes after the last whole element")


def _check_encapsulated(value: bytes) -> None:
    offset, items = 0, 0
    while offset < len(value):
        if offset + 8 > len(value):
            raise MalformedInstance("encapsulated pixel data ends inside an item header")
        group, element, length = struct.unpack_from("<HHL", value, offset)
        tag = (group << 16) | element
        if tag == 0xFFFEE0DD:
            return
        if tag != 0xFFFEE000 or length == _UNDEFINED:
            raise MalformedInstance("encapsulated pixel data has an invalid item")
        offset += 8 + length
        items += 1
    if offset != len(value) or items < 2:
        raise MalformedInstance("encapsulated pixel data is truncated")


def _check_pixel_data(dataset: Dataset, transfer_syntax: UID) -> None:
    if _PIXEL_DATA not in dataset:
        # Image Pixel Module (PS3.3 C.7.6.3): an image described by Rows, Columns and Bits Allocated
        # carries pixel data, so its absence means the dataset was cut before it.
        described = all(keyword in dataset for keyword in ("Rows", "Columns", "BitsAllocated"))
        if described and not any(tag in dataset for tag in _FLOAT_PIXEL_DATA):
            raise MalformedInstance("image attributes without pixel data")
        return
    raw = dataset.get_item(_PIXEL_DATA)
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes):
        return
    if transfer_syntax.is_encapsulated:
        _check_encapsulated(value)
        return
    rows = _value(dataset, "Rows", int)
    columns = _value(dataset, "Columns", int)
    bits = _value(dataset, "BitsAllocated", int)
    if rows is None or columns is None or bits is None:
        raise MalformedInstance("pixel data without Rows, Columns or BitsAllocated")
    samples = _value(dataset, "SamplesPerPixel", int) or 1
    frames = _value(dataset, "NumberOfFrames", int) or 1
    if min(rows, columns, bits, samples, frames) <= 0:
        raise MalformedInstance("non-positive image dimensions")
    pixels = rows * columns * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    if len(value) < expected:
        raise MalformedInstance(f"pixel data holds {len(value)} of {expected} expected bytes")


def parse_instance(
    data: bytes, expected_sop_class: str | None = None, expected_sop_instance: str | None = None
) -> InstanceHeader:
    """Parse a whole Part 10 file held in memory.

    Parameters
    ----------
    data
        Preamble, file meta information and the dataset as received.
    expected_sop_class, expected_sop_instance
        Affected SOP Class/Instance UIDs of the C-STORE request (PS3.7 9.1.1.1), when known.

    Raises
    ------
    MalformedInstance
        The data cannot be parsed, is truncated, or lacks an identifying UID.
    SopClassMismatch
        The dataset's SOP Class UID differs from the request's.
    """
    try:
        dataset = pydicom.dcmread(BytesIO(data), force=True)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for bad input
        raise MalformedInstance(f"unreadable dataset: {type(error).__name__}") from None
    try:
        transfer_syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
        known = transfer_syntax.is_transfer_syntax
    except Exception:  # noqa: BLE001
        raise MalformedInstance("no transfer syntax in file meta") from None
    if not known:
        raise MalformedInstance("file meta names an unknown transfer syntax")
    _check_element_lengths(dataset)
    _check_fully_read(dataset, len(data), transfer_syntax)
    _check_pixel_data(dataset, transfer_syntax)

    required = {
        keyword: _value(dataset, keyword, _text)
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    }
    missing = [keyword for keyword, value in required.items() if not value]
    if missing:
        raise MalformedInstance("missing " + ", ".join(missing))
    sop_class = str(required["SOPClassUID"])
    sop_instance = str(required["SOPInstanceUID"])
    if expected_sop_instance is not None and sop_instance != expected_sop_instance.strip():
        raise MalformedInstance("SOPInstanceUID differs from the request's Affected SOP Instance UID")
    if expected_sop_class is not None and sop_class != expected_sop_class.strip():
        raise SopClassMismatch("SOPClassUID differs from the request's Affected SOP Class UID")

    position = _value(dataset, "ImagePositionPatient", _floats(3))
    orientation = _value(dataset, "ImageOrientationPatient", _floats(6))
    spacing = _value(dataset, "PixelSpacing", _floats(2))
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=str(required["StudyInstanceUID"]),
        series_instance_uid=str(required["SeriesInstanceUID"]),
        transfer_syntax_uid=str(transfer_syntax),
        modality=_value(dataset, "Modality", _text),
        frame_of_reference_uid=_value(dataset, "FrameOfReferenceUID", _text),
        image_type=_value(dataset, "ImageType", lambda v: tuple(str(x) for x in v)) or (),
        series_number=_value(dataset, "SeriesNumber", int),
        instance_number=_value(dataset, "InstanceNumber", int),
        acquisition_number=_value(dataset, "AcquisitionNumber", int),
        acquisition_time=_value(dataset, "AcquisitionTime", _text),
        trigger_time=_value(dataset, "TriggerTime", float),
        image_position=(position[0], position[1], position[2]) if position else None,
        image_orientation=(
            (orientation[0], orientation[1], orientation[2], orientation[3], orientation[4], orientation[5])
            if orientation
            else None
        ),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        rows=_value(dataset, "Rows", int),
        columns=_value(dataset, "Columns", int),
        number_of_frames=_value(dataset, "NumberOfFrames", int),
        series_description=_value(dataset, "SeriesDescription", _text),
        patient_id=_value(dataset, "PatientID", _text),
        patient_name=_value(dataset, "PatientName", _text),
        patient_birth_date=_value(dataset, "PatientBirthDate", _text),
        accession_number=_value(dataset, "AccessionNumber", _text),
        study_date=_value(dataset, "StudyDate", _text),
        study_time=_value(dataset, "StudyTime", _text),
        study_description=_value(dataset, "StudyDescription", _text),
    )


@dataclass(frozen=True)
class SpooledInstance:
    """An indexed instance: its header and where its file lives, relative to the spool root."""

    header: InstanceHeader
    path: str
