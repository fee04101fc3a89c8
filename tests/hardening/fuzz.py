"""Byte-level mutators of real instances, for fuzzing the node's C-STORE path.

A :class:`Seed` is a whole Part 10 file (a Sunnybrook MR image, a synthetic one, or a compressed or
implicit-VR variant built here with pydicom). A :class:`Case` names a seed and one to three mutations,
each a mutator name and an integer seed for its :class:`random.Random`, so that a case printed in a
failure message is reproduced exactly by :meth:`Case.build`. Mutations touch only the dataset after
the file meta information: the sending SCU must still read the meta to pick a presentation context,
and pynetdicom then streams the dataset bytes undecoded (PS3.7 9.3.1, PS3.10 7.1).

The mutators cover what a hostile or broken sender produces: flipped bytes, truncation, values cut
short under an unchanged length, rewritten value lengths (0xFFFFFFFF on non-SQ elements, lengths past
the end), swapped VR codes in explicit VR data, absurd Rows/Columns/Bits Allocated/Number of Frames,
deeply nested and very wide sequences, and encapsulated pixel data whose Basic Offset Table and
fragment items lie about their sizes (PS3.5 A.4).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_dataset, read_preamble
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from tests.support import synthetic_mr

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN")
_ALL_VRS = (
    *sorted(_LONG_VRS),
    *_SHORT_VRS,
    *(b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"),
    b"\x00\x00",
    b"ZZ",
    b"sq",
    b"\xff\xff",
)


# -- seeds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """A whole instance to mutate, with where its dataset starts and the UIDs it carries."""

    name: str
    data: bytes
    dataset_offset: int
    explicit_vr: bool
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Seed:
        """Read the UIDs and the end of the file meta information of a whole instance."""
        dataset = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
        return cls(
            name=name,
            data=data,
            dataset_offset=dataset_offset(data),
            explicit_vr=not syntax.is_implicit_VR,
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            transfer_syntax_uid=str(syntax),
        )


def _read_meta(data: bytes) -> tuple[Dataset, int]:
    stream = BytesIO(data)
    read_preamble(stream, False)
    meta = read_dataset(stream, False, True, stop_when=lambda tag, _vr, _length: tag.group != 2)
    return meta, stream.tell()


def dataset_offset(data: bytes) -> int:
    """Offset of the dataset in Part 10 bytes: after the preamble and the group 0002 elements."""
    return _read_meta(data)[1]


def file_meta(data: bytes) -> FileMetaDataset:
    """The file meta information alone (the dataset, however broken, is not read)."""
    return FileMetaDataset(_read_meta(data)[0])


def _part10(dataset: Dataset, syntax: UID) -> bytes:
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=syntax.is_implicit_VR, little_endian=True)
    return buffer.getvalue()


def _compressed(data: bytes, syntax: UID) -> bytes:
    dataset = pydicom.dcmread(BytesIO(data))
    dataset.compress(syntax)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _multiframe_rle() -> bytes:
    """Four 16 x 16 frames, RLE Lossless, with a filled Basic Offset Table (PS3.5 A.4, A.4.2)."""
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    frames = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16) % 4096
    dataset.NumberOfFrames = 4
    dataset.PixelData = frames.tobytes()
    dataset.compress(RLELossless, encoding_plugin="pydicom")
    fragments = list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=4))
    dataset.PixelData = encapsulate(fragments, has_bot=True)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _with_sequences() -> bytes:
    """A synthetic MR image carrying nested sequences, defined and undefined length."""
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    inner = Dataset()
    inner.ReferencedSOPClassUID = dataset.SOPClassUID
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    middle = Dataset()
    middle.CodeValue = "T-32600"
    middle.CodingSchemeDesignator = "SRT"
    middle.CodeMeaning = "Left ventricle"
    middle.ReferencedImageSequence = DicomSequence([inner, inner])
    dataset.AnatomicRegionSequence = DicomSequence([middle])
    dataset.ReferencedImageSequence = DicomSequence([inner])
    dataset.ReferencedImageSequence.is_undefined_length = False
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_seeds(sunnybrook_paths: Sequence[Path]) -> list[Seed]:
    """Real and synthetic instances in every encoding the mutators care about.

    ``sunnybrook_paths`` are read in place (never copied); without them the synthetic seeds remain.
    """
    seeds = [
        Seed.from_bytes(f"sunnybrook:{path.parent.name}/{path.name}", path.read_bytes())
        for path in sunnybrook_paths
    ]
    synthetic = synthetic_mr()
    seeds.append(Seed.from_bytes("synthetic", synthetic))
    seeds.append(
        Seed.from_bytes(
            "synthetic-implicit", _part10(pydicom.dcmread(BytesIO(synthetic)), ImplicitVRLittleEndian)
        )
    )
    seeds.append(Seed.from_bytes("synthetic-sequences", _with_sequences()))
    seeds.append(Seed.from_bytes("synthetic-rle-4-frames-bot", _multiframe_rle()))
    real = sunnybrook_paths[0].read_bytes() if sunnybrook_paths else synthetic
    seeds.append(Seed.from_bytes("rle", _compressed(real, RLELossless)))
    seeds.append(Seed.from_bytes("jpeg-ls", _compressed(real, JPEGLSLossless)))
    seeds.append(Seed.from_bytes("jpeg-2000", _compressed(real, JPEG2000Lossless)))
    return seeds


# -- layout: where elements and items are, found leniently ----------------------------------------


@dataclass(frozen=True)
class Span:
    """One element or item header found in the dataset bytes."""

    tag: int
    vr: bytes | None
    header: int
    length_at: int
    length_size: int
    length: int
    value_at: int
    depth: int

    @property
    def end(self) -> int | None:
        """Offset after the value, when its length is defined."""
        return None if self.length == _UNDEFINED else self.value_at + self.length


def layout(data: bytes, start: int, explicit_vr: bool) -> list[Span]:
    """Element and item headers from ``start`` on, in order, up to the first one that makes no sense."""
    return list(iter_layout(data, start, explicit_vr))


def iter_layout(data: bytes, start: int, explicit_vr: bool) -> Iterator[Span]:
    """Element and item headers from ``start`` on, in order, up to the first one that makes no sense.

    Sequences (VR SQ, or undefined length) are entered; other undefined-length values (encapsulated
    pixel data) are walked item by item. A mutated file yields the spans before its first damage.
    """
    found = 0
    position = start
    # Open containers, innermost last: (end or None for "until its delimiter", holds fragments).
    open_: list[tuple[int | None, bool]] = []
    while position + 8 <= len(data) and found < 200_000:
        found += 1
        while open_ and open_[-1][0] is not None and position >= (open_[-1][0] or 0):
            open_.pop()
        depth = len(open_)
        group, element = struct.unpack_from("<HH", data, position)
        tag = (group << 16) | element
        if group == 0xFFFE:
            (length,) = struct.unpack_from("<L", data, position + 4)
            yield Span(tag, None, position, position + 4, 4, length, position + 8, depth)
            position += 8
            in_fragments = bool(open_) and open_[-1][1]
            if tag == _ITEM and in_fragments:
                if length == _UNDEFINED:
                    break
                position += length
            elif tag == _ITEM:
                open_.append((None if length == _UNDEFINED else position + length, False))
            elif open_ and open_[-1][0] is None:  # a delimiter closes an undefined-length container
                open_.pop()
            continue
        if explicit_vr:
            vr: bytes | None = data[position + 4 : position + 6]
            if vr in _LONG_VRS:
                if position + 12 > len(data):
                    break
                (length,) = struct.unpack_from("<L", data, position + 8)
                length_at, length_size, value_at = position + 8, 4, position + 12
            else:
                (length,) = struct.unpack_from("<H", data, position + 6)
                length_at, length_size, value_at = position + 6, 2, position + 8
        else:
            (length,) = struct.unpack_from("<L", data, position + 4)
            vr, length_at, length_size, value_at = None, position + 4, 4, position + 8
        yield Span(tag, vr, position, length_at, length_size, length, value_at, depth)
        is_sequence = vr in (b"SQ", b"UN") or (vr is None and _dictionary_vr(tag) == "SQ")
        if length == _UNDEFINED:
            open_.append((None, tag == _PIXEL_DATA or not is_sequence))
            position = value_at
        elif is_sequence and vr != b"UN":
            open_.append((value_at + length, False))
            position = value_at
        else:
            position = value_at + length


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


# -- mutators -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a mutator works on: the current bytes, where the dataset starts, and its encoding."""

    data: bytes
    start: int
    explicit_vr: bool

    def spans(self) -> list[Span]:
        """The current layout (recomputed, since an earlier mutation may have moved everything)."""
        return layout(self.data, self.start, self.explicit_vr)

    def offset(self, rng: random.Random) -> int:
        """An offset in the dataset: near an element header half of the time, else anywhere."""
        spans = self.spans()
        if spans and rng.random() < 0.5:
            span = rng.choice(spans)
            return min(len(self.data) - 1, max(self.start, span.header + rng.randint(-2, 12)))
        return rng.randrange(self.start, len(self.data))


Mutator = Callable[[Target, random.Random], bytes]


def flip_bytes(target: Target, rng: random.Random) -> bytes:
    """XOR one to eight bytes with non-zero values."""
    data = bytearray(target.data)
    for _ in range(rng.randint(1, 8)):
        data[target.offset(rng)] ^= rng.randint(1, 255)
    return bytes(data)


def truncate(target: Target, rng: random.Random) -> bytes:
    """Cut the file: inside a header, inside a value, or a few bytes before the end."""
    if rng.random() < 0.2:
        return target.data[: len(target.data) - rng.randint(1, 16)]
    return target.data[: target.offset(rng)]


def cut_value(target: Target, rng: random.Random) -> bytes:
    """Remove bytes from inside one element's value, leaving its declared length as it was."""
    spans = [span for span in target.spans() if span.length not in (0, _UNDEFINED)]
    if not spans:
        return truncate(target, rng)
    span = rng.choice(spans)
    available = min(span.length, len(target.data) - span.value_at)
    if available <= 0:
        return truncate(target, rng)
    cut = rng.randint(1, available)
    at = span.value_at + rng.randint(0, available - cut)
    return target.data[:at] + target.data[at + cut :]


def insert_garbage(target: Target, rng: random.Random) -> bytes:
    """Insert 1 to 64 random bytes at an element boundary or anywhere."""
    at = target.offset(rng)
    return target.data[:at] + rng.randbytes(rng.randint(1, 64)) + target.data[at:]


def duplicate_chunk(target: Target, rng: random.Random) -> bytes:
    """Copy a stretch of the dataset (often whole elements) to another place: repeated, unordered tags."""
    spans = target.spans()
    if len(spans) < 2:
        return insert_garbage(target, rng)
    first, last = sorted(rng.sample(range(len(spans)), 2))
    chunk = target.data[spans[first].header : spans[last].header]
    at = rng.choice(spans).header
    return target.data[:at] + chunk + target.data[at:]


def rewrite_length(target: Target, rng: random.Random) -> bytes:
    """Give one element or item a wrong length: 0, odd, off by one, undefined, huge or random."""
    spans = target.spans()
    if not spans:
        return flip_bytes(target, rng)
    span = rng.choice(spans)
    limit = 0xFFFF if span.length_size == 2 else _UNDEFINED
    choices = [0, 1, 3, span.length + 1, max(0, span.length - 1), span.length * 2 + 2, limit, limit - 1]
    if span.length_size == 4:
        choices += [
            _UNDEFINED,
            0x7FFFFFFF,
            0x80000000,
            len(target.data),
            len(target.data) - span.value_at + 1,
        ]
    length = min(limit, rng.choice([*choices, rng.randint(0, limit)]))
    data = bytearray(target.data)
    struct.pack_into("<H" if span.length_size == 2 else "<L", data, span.length_at, length)
    return bytes(data)


def swap_vr(target: Target, rng: random.Random) -> bytes:
    """Replace an element's VR code (explicit VR only) with another, which may change its header size."""
    spans = [span for span in target.spans() if span.vr is not None]
    if not spans:
        return rewrite_length(target, rng)
    data = bytearray(target.data)
    for span in rng.sample(spans, min(len(spans), rng.randint(1, 3))):
        data[span.header + 4 : span.header + 6] = rng.choice([vr for vr in _ALL_VRS if vr != span.vr])
    return bytes(data)


def _element(tag: int, vr: bytes, value: bytes, explicit_vr: bool) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit_vr:
        return header + struct.pack("<L", len(value)) + value
    if vr in _LONG_VRS:
        return header + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return header + vr + struct.pack("<H", len(value)) + value


def _put(target: Target, tag: int, vr: bytes, value: bytes) -> bytes:
    """Replace a top-level element's value (re-encoding its header), or insert it in tag order."""
    encoded = _element(tag, vr, value, target.explicit_vr)
    top = (span for span in iter_layout(target.data, target.start, target.explicit_vr) if span.depth == 0)
    for span in top:
        if span.tag == tag and span.end is not None:
            return target.data[: span.header] + encoded + target.data[span.end :]
        if span.tag > tag:
            return target.data[: span.header] + encoded + target.data[span.header :]
    return target.data + encoded


_US_DIMENSIONS = {
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
    0x00280002: "SamplesPerPixel",
}
_ABSURD_US = (0, 1, 7, 3, 255, 0x7FFF, 0x8000, 0xFFFF)
_ABSURD_FRAMES = (b"999999999", b"0", b"-1", b"1e9", b"abc", b"4294967296", b"", b"2147483648", b"1\\2")


def absurd_dimensions(target: Target, rng: random.Random) -> bytes:
    """Set Rows, Columns, Bits Allocated, Samples per Pixel or Number of Frames to absurd values."""
    data = target.data
    for _ in range(rng.randint(1, 3)):
        current = Target(data, target.start, target.explicit_vr)
        tag = rng.choice([*_US_DIMENSIONS, 0x00280008, 0x00280008])
        if tag == 0x00280008:
            data = _put(current, tag, b"IS", rng.choice(_ABSURD_FRAMES))
        else:
            data = _put(current, tag, b"US", struct.pack("<H", rng.choice(_ABSURD_US)))
    return data


_SEQUENCE_TAGS = (0x00081140, 0x00081115, 0x0040A730, 0x00082112)
_DEPTHS = (1, 2, 16, 31, 32, 33, 63, 64, 65, 100, 150, 300, 1000, 10_000)


def _nested(
    tag: int, depth: int, rng: random.Random, explicit_vr: bool, innermost: bytes, style: str | None = None
) -> bytes:
    """``depth`` sequences of one item each, nested; each level of defined or undefined length
    (``style``: "defined", "undefined" or "mixed"; drawn when None)."""
    style = style or rng.choice(("defined", "undefined", "mixed"))
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + (b"SQ\x00\x00" if explicit_vr else b"")
    prefixes: list[bytes] = []  # innermost level first
    suffixes: list[bytes] = []
    size = len(innermost)  # bytes inside the current level's item
    for _ in range(depth):
        if style == "undefined" or (style == "mixed" and rng.random() < 0.5):
            prefixes.append(
                header + struct.pack("<L", _UNDEFINED) + struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED)
            )
            suffixes.append(struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
        else:
            prefixes.append(header + struct.pack("<L", size + 8) + struct.pack("<HHL", 0xFFFE, 0xE000, size))
            suffixes.append(b"")
        size += len(prefixes[-1]) + len(suffixes[-1])
    return b"".join(reversed(prefixes)) + innermost + b"".join(suffixes)


def _insert_top_level(target: Target, tag: int, encoded: bytes) -> bytes:
    for span in iter_layout(target.data, target.start, target.explicit_vr):
        if span.depth == 0 and span.tag > tag:
            return target.data[: span.header] + encoded + target.data[span.header :]
    return target.data + encoded


def deep_sequence(target: Target, rng: random.Random) -> bytes:
    """Insert a sequence nested up to 10,000 levels deep, its innermost item sometimes lying."""
    tag = rng.choice(_SEQUENCE_TAGS)
    depth = rng.choice(_DEPTHS)
    innermost = b""
    if rng.random() < 0.3:  # an element whose length runs past its item
        element = bytearray(_element(0x00081155, b"UI", b"1.2.3.4", target.explicit_vr))
        if target.explicit_vr:
            struct.pack_into("<H", element, 6, 0xFF00)
        else:
            struct.pack_into("<L", element, 4, 0xFF00)
        innermost = bytes(element)
    return _insert_top_level(target, tag, _nested(tag, depth, rng, target.explicit_vr, innermost))


def wide_sequence(target: Target, rng: random.Random) -> bytes:
    """Insert a sequence of up to 250,000 empty items (8 bytes each on the wire), past the item limit."""
    tag = rng.choice(_SEQUENCE_TAGS)
    count = rng.choice((1_000, 10_000, 250_000))
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0) * count
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + (b"SQ\x00\x00" if target.explicit_vr else b"")
    if rng.random() < 0.5:
        encoded = header + struct.pack("<L", len(items)) + items
    else:
        encoded = header + struct.pack("<L", _UNDEFINED) + items + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return _insert_top_level(target, tag, encoded)


def _fragment_items(target: Target) -> list[Span]:
    spans = target.spans()
    pixel = next((s for s in spans if s.tag == _PIXEL_DATA and s.length == _UNDEFINED and s.depth == 0), None)
    if pixel is None:
        return []
    return [s for s in spans if s.header > pixel.header and s.tag in (_ITEM, _SEQUENCE_DELIMITER)]


def lying_fragments(target: Target, rng: random.Random) -> bytes:
    """Make encapsulated pixel data lie: Basic Offset Table entries, fragment lengths, item tags,
    a missing delimiter, or a Number of Frames that the fragments do not hold."""
    items = _fragment_items(target)
    fragments = [item for item in items if item.tag == _ITEM]
    if not fragments:
        return absurd_dimensions(target, rng)
    data = bytearray(target.data)
    choice = rng.randrange(6)
    if choice == 0:  # Basic Offset Table: absurd, odd or decreasing offsets (or one where none was)
        table = fragments[0]
        count = max(1, table.length // 4) if table.length else rng.randint(1, 8)
        offsets = [rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFF0, rng.randrange(1 << 32))) for _ in range(count)]
        encoded = struct.pack(f"<{count}L", *offsets)
        return (
            bytes(data[: table.header])
            + struct.pack("<HHL", 0xFFFE, 0xE000, len(encoded))
            + encoded
            + bytes(data[table.value_at + min(table.length, len(data) - table.value_at) :])
        )
    if choice == 1:  # a fragment longer or shorter than it says
        item = rng.choice(fragments)
        lie = rng.choice(
            (item.length + 2, item.length * 2, max(0, item.length - 2), 0xFFFFFFF0, _UNDEFINED, 1)
        )
        struct.pack_into("<L", data, item.length_at, lie & 0xFFFFFFFF)  # an earlier lie may be huge
    elif choice == 2:  # a fragment that is not an item
        item = rng.choice(fragments)
        struct.pack_into(
            "<HH",
            data,
            item.header,
            rng.choice((0xFFFE, 0x7FE0, 0x0000)),
            rng.choice((0xE00D, 0x0010, 0xE0DD)),
        )
    elif choice == 3:  # no sequence delimiter: the file ends with the last fragment
        delimiter = next((item for item in items if item.tag == _SEQUENCE_DELIMITER), None)
        if delimiter is not None:
            return bytes(data[: delimiter.header])
    elif choice == 4:  # more frames declared than the fragments hold (compressed data too small)
        return _put(target, 0x00280008, b"IS", rng.choice((b"2", b"1000", b"999999999")))
    else:  # Rows and Columns far larger than the compressed frames could hold
        data = bytearray(_put(target, 0x00280010, b"US", struct.pack("<H", 0xFFFF)))
        return _put(
            Target(bytes(data), target.start, target.explicit_vr),
            0x00280011,
            b"US",
            struct.pack("<H", 0xFFFF),
        )
    return bytes(data)


def claim_other_sop_class(target: Target, rng: random.Random) -> bytes:
    """Rewrite the dataset's SOP Class UID to another storage class (the sender then claims it)."""
    return _put(target, 0x00080016, b"UI", rng.choice((CT_IMAGE_STORAGE, SECONDARY_CAPTURE_STORAGE)).encode())


MUTATORS: dict[str, Mutator] = {
    "flip_bytes": flip_bytes,
    "truncate": truncate,
    "cut_value": cut_value,
    "insert_garbage": insert_garbage,
    "duplicate_chunk": duplicate_chunk,
    "rewrite_length": rewrite_length,
    "swap_vr": swap_vr,
    "absurd_dimensions": absurd_dimensions,
    "deep_sequence": deep_sequence,
    "wide_sequence": wide_sequence,
    "lying_fragments": lying_fragments,
    "claim_other_sop_class": claim_other_sop_class,
}


# -- cases ----------------------------------------------------------------------------------------


def fresh_uid(length: int, serial: int) -> str:
    """A UID of exactly ``length`` characters (2.25 root), unique per ``serial`` (PS3.5 9.1)."""
    prefix = f"2.25.{serial + 1}"
    if len(prefix) >= length:
        raise ValueError("UID too short to replace")
    filler = random.Random(serial).choices("0123456789", k=length - len(prefix))
    return prefix + "".join(filler)


@dataclass(frozen=True)
class Case:
    """One fuzz case: a seed, its instance UID replaced, then each mutation applied in turn."""

    seed: int
    mutations: tuple[tuple[str, int], ...]
    serial: int = field(default=0, compare=False)

    def describe(self, seeds: Sequence[Seed]) -> str:
        """Enough to rebuild the case: seed name, serial and every mutation with its seed."""
        steps = ", ".join(f"{name}({value})" for name, value in self.mutations)
        return f"{seeds[self.seed].name} #{self.serial}: {steps}"

    def sop_instance_uid(self, seeds: Sequence[Seed]) -> str:
        """The case's own SOP Instance UID, in its file meta and (unless mutated) its dataset."""
        return fresh_uid(len(seeds[self.seed].sop_instance_uid), self.serial)

    def build(self, seeds: Sequence[Seed]) -> bytes:
        """The mutated Part 10 bytes; the file meta is left whole (bar the instance UID)."""
        seed = seeds[self.seed]
        data = seed.data.replace(seed.sop_instance_uid.encode(), self.sop_instance_uid(seeds).encode())
        for name, value in self.mutations:
            if len(data) <= seed.dataset_offset:
                break  # truncated to the file meta: nothing left to mutate
            data = MUTATORS[name](Target(data, seed.dataset_offset, seed.explicit_vr), random.Random(value))
        return data


def claimed_sop_class(data: bytes, start: int, explicit_vr: bool) -> str | None:
    """The SOP Class UID the dataset claims, when it can be read at all."""
    for span in iter_layout(data, start, explicit_vr):
        if span.depth == 0 and span.tag == 0x00080016 and span.end is not None:
            return data[span.value_at : span.end].rstrip(b"\x00 ").decode("ascii", "replace")
        if span.depth == 0 and span.tag > 0x00080016:
            return None
    return None
