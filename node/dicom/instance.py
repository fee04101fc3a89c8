"""Parse a received instance once: check it is whole, and extract the header fields the index keeps.

pydicom reads truncated data without complaint, so the checks here are explicit: every element, at
every nesting level, fits in the item or sequence that holds it and every undefined-length one is
closed by its delimiter (PS3.5 7.1, 7.5), no bytes are left after the last whole element, an image
has pixel data, native pixel data is at least Rows x Columns x frames, encapsulated pixel data is a
whole sequence of items with a Basic Offset Table that points at them and enough fragments for its
frames (PS3.5 A.4), its first frame's codestream header (JPEG, JPEG-LS, JPEG 2000, RLE) describes
the image the dataset describes, and the identifying UIDs exist.

The header is read from the same walk (the top-level elements it needs; pydicom converts only the
values that are not plain text), so an instance is parsed once on receipt. Hostile data is bounded
before pydicom ever reads the stored file (the pipeline does, later): the structure is walked without
recursion, and a dataset nested deeper than :data:`MAX_SEQUENCE_DEPTH` sequences, holding more than
:data:`MAX_SEQUENCE_ITEMS` items, or inflating (deflated transfer syntax, PS3.5 A.5) to more than
:data:`MAX_INFLATED_BYTES` is refused, since pydicom parses nested sequences recursively and builds a
Python object for every item.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from itertools import pairwise
from typing import Any, TypeVar, cast

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from node.dicom.dates import date_of
from node.errors import MalformedInstance, SopClassMismatch

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_FLOAT_PIXEL_DATA = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))
_PIXEL_TAGS = frozenset({_PIXEL_DATA, *_FLOAT_PIXEL_DATA})
_DELIMITATION_ITEM_BYTES = 8
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
#: VRs whose explicit VR header has two reserved bytes and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_T = TypeVar("_T")
#: :func:`_raw_value`'s answer where pydicom must convert the value.
_SLOW = object()

#: Sequences nested deeper than this are refused: pydicom reads nested sequences recursively, and
#: real instances (SR content trees included) stay far below it.
MAX_SEQUENCE_DEPTH = 64
#: Sequence items in one instance, all levels together, beyond which it is refused: pydicom builds a
#: Dataset for each (about 0.7 kB and 50 us apiece), so 8-byte empty items would otherwise amplify.
#: An Enhanced MR cine carries about ten functional-group items per frame, so this admits ~20,000
#: frames while bounding a hostile instance to ~140 MB and ~10 s of parsing.
MAX_SEQUENCE_ITEMS = 200_000
#: Largest dataset a deflated instance may inflate to (inflated whole, in memory, here and by pydicom).
MAX_INFLATED_BYTES = 256 * 1024 * 1024

_JPEG_SYNTAXES = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless}
)
_J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
#: JPEG markers without a length: TEM, RSTn, SOI, EOI (ISO 10918-1 Table B.1).
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xDA)})
#: Start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC) and JPEG-LS SOF55.
_JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})


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
    #: Acquisition Time (0008,0032), as a DT value (date first, see :func:`dated_time`) where the
    #: header gives a valid Acquisition Date (0008,0022).
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


@dataclass(frozen=True)
class Stored:
    """Outcome of a successful store."""

    header: InstanceHeader
    duplicate: bool


#: VRs whose values are ASCII text that pydicom decodes without the character set (PS3.5 6.2): read
#: straight from the element's bytes, as pydicom would read them, for the header of each instance.
_PLAIN_TEXT_VRS = frozenset({"AS", "CS", "DA", "DS", "IS", "TM", "UI"})
#: Multi-valued text VRs in the Specific Character Set: read from the bytes the same way when these are
#: ASCII without an escape, which every character set of PS3.3 C.12.1.1.2 decodes as ASCII. (PN is not
#: one: pydicom drops a name's empty trailing component groups, ``Doe^John==`` reads ``Doe^John``.)
_CHARSET_TEXT_VRS = frozenset({"LO", "SH"})


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str | None]:
    """An attribute's tag and its data dictionary VR (for implicit VR data)."""
    tag = Tag(keyword)
    try:
        return tag, str(dictionary_VR(tag))
    except KeyError:
        return tag, None


class _Walked:
    """The top-level elements :func:`_check_structure` framed, as pydicom's reader would hold them: each
    value the bytes it declares, read straight from the data where that is cheap (:func:`_raw_value`),
    pydicom converting the rest from a dataset of raw elements made when first asked for."""

    def __init__(self, data: bytes, framed: dict[int, _Framed], explicit: bool, little_endian: bool) -> None:
        self.data = data
        self.framed = framed
        self.explicit = explicit
        self.little_endian = little_endian

    def __contains__(self, tag: int) -> bool:
        return tag in self.framed

    def raw(self, tag: int) -> tuple[str | None, bytes | None] | None:
        """An element's VR (None: implicit) and value as pydicom's reader holds it, None if absent."""
        found = self.framed.get(tag)
        return None if found is None else (found[0], self._value_of(found))

    def _value_of(self, framed: _Framed) -> bytes | None:
        vr, _length, start, end = framed
        # pydicom's reader: an empty value is the VR's raw empty value (None for a number).
        return self.data[start:end] if end > start else cast(bytes | None, empty_value_for_VR(vr, raw=True))

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The elements as a pydicom dataset of raw elements (converted when read)."""
        return Dataset(
            {
                BaseTag(tag): RawDataElement(
                    BaseTag(tag),
                    found[0],
                    found[1],
                    self._value_of(found),
                    found[2],
                    not self.explicit,
                    self.little_endian,
                )
                for tag, found in self.framed.items()
                if tag not in _PIXEL_TAGS  # never converted: no copy of the pixels
            }
        )


def _raw_value(walked: _Walked, keyword: str, many: bool) -> Any:
    """An attribute's value read from its raw bytes the way pydicom's reader converts it, for the
    VRs where that is cheap (plain text, a single US); :data:`_SLOW` where pydicom must convert it
    (another VR, text that is not plain ASCII, a multi-value where one value is wanted, or one value
    where several are). pydicom's conversion costs some 50 us per element, this 1 us.
    """
    tag, dictionary_vr = _tag_and_vr(keyword)
    raw = walked.raw(tag)
    if raw is None:
        return None
    vr, value = raw
    if not isinstance(value, bytes):
        return _SLOW
    vr = vr or dictionary_vr
    if vr == "US" and len(value) == 2 and not many:
        return int.from_bytes(value, "little" if walked.little_endian else "big")
    plain = vr in _PLAIN_TEXT_VRS or (vr in _CHARSET_TEXT_VRS and value.isascii() and b"\x1b" not in value)
    if not plain:
        return _SLOW
    # pydicom: decoded as ISO 8859-1, trailing spaces and NULs removed, split at backslashes; a UID
    # also loses its leading and trailing whitespace.
    items = value.decode("latin-1").rstrip(" \x00").split("\\")
    if vr == "UI":
        items = [item.strip() for item in items]
    if (len(items) > 1) != many:
        return _SLOW
    return items if many else items[0]


def _value(walked: _Walked, keyword: str, convert: Callable[[Any], _T], many: bool = False) -> _T | None:
    """An attribute converted, or None when absent, empty or not convertible (never raises).

    ``many``: ``convert`` takes a multi-value (a list of its values). Read from the raw bytes where
    that is cheap and gives what pydicom gives (:func:`_raw_value`); any value that does not convert
    from there is read again through pydicom, which decides.
    """
    try:
        quick = _raw_value(walked, keyword, many)
        if quick is None or quick == "":
            return None
        if quick is not _SLOW:
            return convert(quick)
    except Exception:  # noqa: BLE001 - pydicom decides below
        pass
    try:
        raw = walked.dataset.get(keyword)
        if raw is None or raw == "":
            return None
        return convert(raw)
    except Exception:  # noqa: BLE001 - any malformed value is treated as absent
        return None


#: IS values lie in -2^31 .. 2^31-1 (PS3.5 Table 6.2-1); one outside is invalid and read as absent
#: (the file keeps it as received), so it can never overflow an index column.
_IS_RANGE = range(-(2**31), 2**31)


def integer(value: Any) -> int:
    """An IS (or US) value as an int; ValueError outside the range an IS may hold."""
    number = int(value)
    if number not in _IS_RANGE:
        raise ValueError(f"integer string out of range: {number}")
    return number


def _text(value: Any) -> str:
    return str(value).strip()


def texts(value: Any) -> tuple[str, ...]:
    """A DICOM multi-value as strings; a single value, which pydicom gives as one str, is one item."""
    if isinstance(value, str):
        return (value,)
    return tuple(str(item) for item in value)


#: Digits of a DA value (YYYYMMDD, PS3.5 6.2); a DT value starts with one.
def dated_time(date: str | None, time: str | None) -> str | None:
    """``time`` (TM) prefixed with ``date`` (DA) as one DT value, or ``time`` alone for want of a date.

    Acquisitions on either side of midnight then compare in order wherever the headers date them.
    A date that is no calendar date (:func:`~node.dicom.dates.date_of`) is left out rather than trusted.
    """
    if not time or not date or date_of(date) is None:
        return time
    return date + time.replace(":", "")


def floats(count: int) -> Callable[[Any], tuple[float, ...]]:
    """A converter of a DICOM multi-value to exactly ``count`` floats (ValueError otherwise)."""

    def convert(value: Any) -> tuple[float, ...]:
        numbers = tuple(float(v) for v in value)
        if len(numbers) != count:
            raise ValueError(f"expected {count} values")
        return numbers

    return convert


def _file_meta(data: bytes) -> tuple[int, UID]:
    """Where the dataset starts (after preamble and group 0002) and the transfer syntax it names."""

    def after_meta(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        return int(tag) >> 16 != 0x0002

    try:
        stream = BytesIO(data)
        read_preamble(stream, True)
        meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=after_meta)
        transfer_syntax = UID(str(meta.TransferSyntaxUID))
        known = transfer_syntax.is_transfer_syntax
    except Exception:  # noqa: BLE001 - pydicom raises many types for bad input
        raise MalformedInstance("no transfer syntax in file meta") from None
    if not known:
        raise MalformedInstance("file meta names an unknown transfer syntax")
    return stream.tell(), transfer_syntax


def _inflated(deflated: bytes) -> bytes:
    """A deflated dataset (PS3.5 A.5) inflated, refusing one that inflates past the bound."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(deflated, MAX_INFLATED_BYTES)
    except zlib.error:
        raise MalformedInstance("deflated dataset does not inflate") from None
    if inflater.unconsumed_tail:
        raise MalformedInstance(f"deflated dataset inflates past {MAX_INFLATED_BYTES} bytes")
    return inflated


@dataclass
class _Container:
    """An open sequence or item while walking: where it ends (None: at its delimiter), its encoding."""

    end: int | None
    is_sequence: bool
    explicit_vr: bool


#: Every VR of PS3.5 Table 6.2-1, as encoded in an explicit VR header.
_VRS = _LONG_VRS | {
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FD",
    b"FL",
    b"IS",
    b"LO",
    b"LT",
    b"PN",
    b"SH",
    b"SL",
    b"SS",
    b"ST",
    b"TM",
    b"UI",
    b"UL",
    b"US",
}


def _looks_explicit(data: bytes, position: int, assumed: bool) -> bool:
    """Whether a dataset starting at ``position`` is explicit VR, judged as pydicom judges it.

    pydicom reads a dataset as explicit VR when its first element carries two upper-case letters
    where the VR would be, whatever the transfer syntax says; items of an explicit VR dataset may be
    implicit VR (PS3.5 6.2.2, sequences of undefined length), but not the other way round.
    """
    vr = data[position + 4 : position + 6]
    if len(vr) < 2:
        return assumed
    return 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _undefined_is_sequence(data: bytes, position: int, tag: int, vr: bytes | None, order: str) -> bool:
    """Whether an undefined-length element is a sequence, as pydicom decides (PS3.5 6.2.2, 7.5)."""
    if vr is not None and vr != b"UN":
        return vr == b"SQ"
    if vr == b"UN":
        return True
    try:
        return str(dictionary_VR(tag)) == "SQ"
    except KeyError:  # a private or unknown tag: a sequence when an item follows
        return data[position : position + 4] == struct.pack(f"{order}HH", 0xFFFE, 0xE000)


def _defined_is_sequence(tag: int, vr: bytes | None) -> bool:
    if vr is not None:
        return vr == b"SQ"
    try:
        return str(dictionary_VR(tag)) == "SQ"
    except KeyError:
        return False


def _undefined_value_end(data: bytes, position: int, order: str) -> int:
    """Where an undefined-length value that is not a sequence ends, found as pydicom finds it.

    It is walked as items of encapsulated pixel data up to their Sequence Delimitation Item (which a
    fragment's bytes cannot fake); when that fails, the value ends at the first delimiter's bytes.
    """
    item = struct.pack(f"{order}HH", 0xFFFE, 0xE000)
    delimiter = struct.pack(f"{order}HH", 0xFFFE, 0xE0DD)
    walk = position
    while walk + 8 <= len(data):
        tag = data[walk : walk + 4]
        if tag == delimiter:
            return walk + 8
        if tag != item:
            break
        (length,) = struct.unpack_from(f"{order}L", data, walk + 4)
        walk += 8 + length
    found = data.find(delimiter, position)
    if found < 0:
        raise MalformedInstance("undefined-length value without a sequence delimiter")
    return found + 8


#: Where a top-level element's value lies in the walked data: its VR (None: implicit), declared length,
#: and the value's first byte and end (an undefined-length value ends before its delimiter).
_Framed = tuple[str | None, int, int, int]


def _check_structure(data: bytes, start: int, transfer_syntax: UID, wanted: frozenset[int]) -> _Walked:
    """Walk every element and item header of the dataset, without recursion; return the top-level
    elements of ``wanted`` (tags) as read, sequences left out, the last of a repeated tag kept.

    Checks what pydicom does not: each value fits in its containing item or sequence (and in the
    data), each undefined-length sequence and item is closed by its delimiter (PS3.5 7.5), and the
    nesting depth and item count stay within their bounds. Values are not decoded. Elements are
    framed as pydicom frames them, including its guesses at implicit VR inside explicit VR data;
    undefined-length values that are not sequences (encapsulated pixel data) end at the first
    Sequence Delimitation Item, and their items are checked by :func:`_check_encapsulated`.

    The top-level elements, so checked, tile the data to its last byte: none is cut short, and
    nothing lies after the last (pydicom stops reading without a word at an element header cut
    short or at a stray delimiter, so a dataset truncated between elements would read as whole).
    """
    order = "<" if transfer_syntax.is_little_endian else ">"
    explicit = _looks_explicit(data, start, not transfer_syntax.is_implicit_VR)
    open_: list[_Container] = [_Container(len(data), False, explicit)]
    position, depth, items = start, 0, 0
    found: dict[int, _Framed] = {}
    while True:
        container = open_[-1]
        if container.end is not None and position >= container.end:
            if position > container.end:
                where = "the data" if len(open_) == 1 else "the item or sequence holding it"
                raise MalformedInstance(f"an element runs past the end of {where}")
            if len(open_) == 1:
                return _Walked(data, found, explicit, transfer_syntax.is_little_endian)
            open_.pop()
            depth -= container.is_sequence
            continue
        if position + 8 > len(data):
            raise MalformedInstance("data ends inside an element header or an open sequence")
        group, element = struct.unpack_from(f"{order}HH", data, position)
        tag = (group << 16) | element
        if group == 0xFFFE:
            (length,) = struct.unpack_from(f"{order}L", data, position + 4)
            position += 8
            if tag == _ITEM and container.is_sequence:
                items += 1
                if items > MAX_SEQUENCE_ITEMS:
                    raise MalformedInstance(f"more than {MAX_SEQUENCE_ITEMS} sequence items")
                item_explicit = container.explicit_vr and _looks_explicit(data, position, True)
                end = None if length == _UNDEFINED else position + length
                open_.append(_Container(end, False, item_explicit))
            elif (
                container.end is None
                and len(open_) > 1
                and tag == (_SEQUENCE_DELIMITER if container.is_sequence else _ITEM_DELIMITER)
            ):
                open_.pop()
                depth -= container.is_sequence
            else:
                raise MalformedInstance(f"unexpected item or delimiter tag ({group:04X},{element:04X})")
            continue
        if container.is_sequence:
            raise MalformedInstance("a sequence holds an element that is not an item")
        vr: bytes | None = data[position + 4 : position + 6] if container.explicit_vr else None
        if vr is not None and vr not in _VRS:
            if b"AA" <= vr <= b"ZZ":  # pydicom could frame it but never decode it
                raise MalformedInstance(f"element ({group:04X},{element:04X}) has an unknown VR")
            vr = None  # pydicom reads an element with an impossible VR as implicit VR
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                raise MalformedInstance("data ends inside an element header")
            (length,) = struct.unpack_from(f"{order}L", data, position + 8)
            position += 12
        elif vr is not None:
            (length,) = struct.unpack_from(f"{order}H", data, position + 6)
            position += 8
        else:
            (length,) = struct.unpack_from(f"{order}L", data, position + 4)
            position += 8
        recorded = tag in wanted and len(open_) == 1
        if recorded:
            # A repeated tag: pydicom keeps the last (a later sequence replaces an earlier value).
            found.pop(tag, None)
        if length == _UNDEFINED and _undefined_is_sequence(data, position, tag, vr, order):
            open_.append(_Container(None, True, container.explicit_vr))
        elif length == _UNDEFINED:
            end = _undefined_value_end(data, position, order)
            if recorded:
                found[tag] = (vr.decode() if vr else None, length, position, end - _DELIMITATION_ITEM_BYTES)
            position = end
            continue
        elif _defined_is_sequence(tag, vr):
            open_.append(_Container(position + length, True, container.explicit_vr))
        else:
            if recorded:
                found[tag] = (vr.decode() if vr else None, length, position, position + length)
            position += length
            continue
        depth += 1
        if depth > MAX_SEQUENCE_DEPTH:
            raise MalformedInstance(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")


def _check_encapsulated(value: bytes, frames: int) -> bytes:
    """Check encapsulated pixel data is a whole sequence of items that can hold ``frames`` frames;
    return its first fragment.

    PS3.5 A.4: the first item is the Basic Offset Table, empty or one offset per frame, each the
    position of a frame's first fragment counted from the first fragment, the first one 0; every
    fragment holds data of a single frame, so there are at least as many fragments as frames.
    """
    offset, table, fragments = 0, None, []
    while offset < len(value):
        if offset + 8 > len(value):
            raise MalformedInstance("encapsulated pixel data ends inside an item header")
        group, element, length = struct.unpack_from("<HHL", value, offset)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED:
            raise MalformedInstance("encapsulated pixel data has an invalid item")
        if table is None:
            table = value[offset + 8 : offset + 8 + length]
        else:
            fragments.append(offset)
        offset += 8 + length
    else:
        if offset != len(value) or not fragments:
            raise MalformedInstance("encapsulated pixel data is truncated")
    if len(fragments) < frames:
        raise MalformedInstance(f"{len(fragments)} pixel data fragments cannot hold {frames} frames")
    if table:
        if len(table) != 4 * frames:
            raise MalformedInstance("Basic Offset Table does not hold one offset per frame")
        starts = {fragment - fragments[0] for fragment in fragments}
        offsets = struct.unpack(f"<{frames}L", table)
        increasing = all(before < after for before, after in pairwise(offsets))
        if offsets[0] != 0 or not increasing or not starts.issuperset(offsets):
            raise MalformedInstance("Basic Offset Table does not point at the fragments")
    (first_length,) = struct.unpack_from("<L", value, fragments[0] + 4)
    return value[fragments[0] + 8 : fragments[0] + 8 + first_length]


def _jpeg_frame_size(fragment: bytes) -> tuple[int, int, int] | None:
    """Rows, columns and components of a JPEG or JPEG-LS frame header (ISO 10918-1 B.2.2, 14495-1)."""
    if not fragment.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(fragment):
        if fragment[offset] != 0xFF:
            return None
        marker = fragment[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", fragment, offset + 2)
        if marker in _JPEG_FRAME_MARKERS:
            if offset + 10 > len(fragment):
                return None
            rows, columns, components = struct.unpack_from(">HHB", fragment, offset + 5)
            return (rows, columns, components) if rows else None  # 0: rows given by a DNL marker
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        offset += 2 + length
    return None


def _j2k_frame_size(fragment: bytes) -> tuple[int, int, int] | None:
    """Rows, columns and components of a JPEG 2000 codestream's SIZ segment (ISO 15444-1 A.5.1)."""
    if not fragment.startswith(b"\xff\x4f\xff\x51") or len(fragment) < 42:
        return None
    width, height, x_offset, y_offset = struct.unpack_from(">LLLL", fragment, 8)
    (components,) = struct.unpack_from(">H", fragment, 40)
    return height - y_offset, width - x_offset, components


def _check_codestream(fragment: bytes, dataset: _Walked, transfer_syntax: UID) -> None:
    """Check the first frame's codestream describes the image the dataset describes.

    Decoders size their output from Rows, Columns, Samples per Pixel and Bits Allocated, so a
    compressed frame that claims a far larger image than it holds must not get past the door.
    """
    rows = _value(dataset, "Rows", int)
    columns = _value(dataset, "Columns", int)
    samples = _value(dataset, "SamplesPerPixel", int) or 1
    bits = _value(dataset, "BitsAllocated", int)
    if transfer_syntax == RLELossless:
        # PS3.5 G.3.1: one segment per byte of each sample, at most 15, the first at offset 64.
        if bits is None or len(fragment) < 64:
            raise MalformedInstance("RLE frame without its header")
        segments, first = struct.unpack_from("<LL", fragment, 0)
        if segments != samples * ((bits + 7) // 8) or segments > 15 or first != 64:
            raise MalformedInstance("RLE header does not match Samples per Pixel and Bits Allocated")
        return
    if transfer_syntax in _JPEG_SYNTAXES:
        size = _jpeg_frame_size(fragment)
    elif transfer_syntax in _J2K_SYNTAXES:
        size = _j2k_frame_size(fragment)
    else:
        return
    if size is not None and rows is not None and columns is not None and size != (rows, columns, samples):
        raise MalformedInstance(
            f"compressed frame is {size[0]} x {size[1]} x {size[2]}, "
            f"the dataset says {rows} x {columns} x {samples}"
        )


def _check_pixel_data(dataset: _Walked, transfer_syntax: UID) -> None:
    raw = dataset.raw(_PIXEL_DATA)
    if raw is None:
        # Image Pixel Module (PS3.3 C.7.6.3): an image described by Rows, Columns and Bits Allocated
        # carries pixel data, so its absence means the dataset was cut before it.
        described = all(
            _tag_and_vr(keyword)[0] in dataset for keyword in ("Rows", "Columns", "BitsAllocated")
        )
        if described and not any(tag in dataset for tag in _FLOAT_PIXEL_DATA):
            raise MalformedInstance("image attributes without pixel data")
        return
    value = raw[1]
    if not isinstance(value, bytes):
        return
    rows = _value(dataset, "Rows", int)
    columns = _value(dataset, "Columns", int)
    bits = _value(dataset, "BitsAllocated", int)
    samples = _value(dataset, "SamplesPerPixel", int)
    frames = _value(dataset, "NumberOfFrames", int)
    if any(v is not None and v <= 0 for v in (rows, columns, bits, samples, frames)):
        raise MalformedInstance("non-positive image dimensions")
    if bits is not None and not (bits == 1 or (bits % 8 == 0 and bits <= 64)):
        raise MalformedInstance("Bits Allocated is neither 1 nor a multiple of 8 up to 64")  # PS3.5 8.1.1
    if transfer_syntax.is_encapsulated:
        _check_codestream(_check_encapsulated(value, frames or 1), dataset, transfer_syntax)
        return
    if rows is None or columns is None or bits is None:
        raise MalformedInstance("pixel data without Rows, Columns or BitsAllocated")
    pixels = rows * columns * (samples or 1) * (frames or 1)
    expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
    if len(value) < expected:
        raise MalformedInstance(f"pixel data holds {len(value)} of {expected} expected bytes")


#: The top-level attributes an instance's header and its pixel data checks read, with the character
#: set their text is in: all that :func:`parse_instance` has pydicom look at.
_HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "FrameOfReferenceUID",
    "ImageType",
    "SeriesNumber",
    "InstanceNumber",
    "AcquisitionNumber",
    "AcquisitionDate",
    "AcquisitionTime",
    "TriggerTime",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    "SeriesDescription",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
)
_HEADER_TAGS = frozenset({*(int(Tag(keyword)) for keyword in _HEADER_KEYWORDS), *_PIXEL_TAGS})


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
    start, transfer_syntax = _file_meta(data)
    body = data
    if transfer_syntax.is_deflated:
        body, start = _inflated(data[start:]), 0
    dataset = _check_structure(body, start, transfer_syntax, _HEADER_TAGS)
    try:
        _check_pixel_data(dataset, transfer_syntax)
    except MalformedInstance:
        raise
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for bad input
        raise MalformedInstance(f"unreadable dataset: {type(error).__name__}") from None

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

    position = _value(dataset, "ImagePositionPatient", floats(3), many=True)
    orientation = _value(dataset, "ImageOrientationPatient", floats(6), many=True)
    spacing = _value(dataset, "PixelSpacing", floats(2), many=True)
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=str(required["StudyInstanceUID"]),
        series_instance_uid=str(required["SeriesInstanceUID"]),
        transfer_syntax_uid=str(transfer_syntax),
        modality=_value(dataset, "Modality", _text),
        frame_of_reference_uid=_value(dataset, "FrameOfReferenceUID", _text),
        image_type=_value(dataset, "ImageType", texts, many=True) or (),
        series_number=_value(dataset, "SeriesNumber", integer),
        instance_number=_value(dataset, "InstanceNumber", integer),
        acquisition_number=_value(dataset, "AcquisitionNumber", integer),
        acquisition_time=dated_time(
            _value(dataset, "AcquisitionDate", _text), _value(dataset, "AcquisitionTime", _text)
        ),
        trigger_time=_value(dataset, "TriggerTime", float),
        image_position=(position[0], position[1], position[2]) if position else None,
        image_orientation=(
            (orientation[0], orientation[1], orientation[2], orientation[3], orientation[4], orientation[5])
            if orientation
            else None
        ),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        rows=_value(dataset, "Rows", integer),
        columns=_value(dataset, "Columns", integer),
        number_of_frames=_value(dataset, "NumberOfFrames", integer),
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
