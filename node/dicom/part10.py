"""A received dataset as a DICOM file (PS3.10 7.1): preamble, prefix and File Meta Information.

The C-STORE handler writes every instance as received behind this header. pydicom's writer builds a
dataset and encodes it element by element (some 300 us for these seven elements); the header is fixed
in form, so it is encoded here directly, byte for byte what pydicom writes (the receiver tests compare
the two).
"""

from __future__ import annotations

import struct

from node.dicom.contexts import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element in Explicit VR Little Endian (OB with the long length form)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def _short_string(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded


def part10(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset: bytes) -> bytes:
    """``dataset`` (as received, in ``transfer_syntax_uid``) behind a File Meta Information header that
    names the instance, its transfer syntax and the node as the implementation that wrote it.

    Raises
    ------
    UnicodeEncodeError
        A UID that is not ASCII (pynetdicom does not accept one in a request).
    """
    elements = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _uid(sop_class_uid)),
            _element(0x0003, b"UI", _uid(sop_instance_uid)),
            _element(0x0010, b"UI", _uid(transfer_syntax_uid)),
            _element(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
            _element(0x0013, b"SH", _short_string(IMPLEMENTATION_VERSION_NAME)),
        )
    )
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"".join((_PREAMBLE, group_length, elements, dataset))
