"""parse_instance: whole instances give their header; damaged ones raise an error carrying its status."""

from __future__ import annotations

import random
import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from node.dicom.instance import parse_instance
from node.dicom.status import Status, dimse_status
from node.errors import MalformedInstance, NodeError, SopClassMismatch
from tests.support import synthetic_mr

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(params=["synthetic", "sunnybrook"])
def whole(request: pytest.FixtureRequest) -> bytes:
    """A whole instance: synthetic, or a real Sunnybrook MR image (skipped without the shared data)."""
    if request.param == "synthetic":
        return synthetic_mr()
    root: Path = request.getfixturevalue("sunnybrook")
    return (root / "SCD0000101" / "1.dcm").read_bytes()


_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _start_of(data: bytes, keyword: str) -> int:
    """Offset of an element's header (explicit VR little endian) in Part 10 bytes."""
    raw = pydicom.dcmread(BytesIO(data)).get_item(Tag(keyword))
    return int(raw.value_tell) - (12 if raw.VR in _LONG_LENGTH_VRS else 8)


def _meta_end(data: bytes) -> int:
    """Offset of the dataset, after the preamble and the file meta information (group 0002)."""
    stream = BytesIO(data)
    read_preamble(stream, False)
    read_dataset(stream, False, True, stop_when=lambda tag, _vr, _length: tag.group != 2)
    return stream.tell()


def _rewritten(data: bytes, **changes: object) -> bytes:
    """The instance re-encoded with attributes changed (``None`` deletes one)."""
    dataset = pydicom.dcmread(BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _refused(data: bytes, error: type[NodeError], status: Status, **expected: str) -> None:
    with pytest.raises(error) as raised:
        parse_instance(data, **expected)
    assert dimse_status(raised.value) is status


def test_whole_instance_gives_its_header(whole: bytes) -> None:
    """A whole instance parses to a header whose UIDs and geometry are the dataset's own."""
    dataset = pydicom.dcmread(BytesIO(whole))
    header = parse_instance(whole, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))
    assert header.sop_class_uid == MRImageStorage
    assert header.sop_instance_uid == dataset.SOPInstanceUID
    assert header.study_instance_uid == dataset.StudyInstanceUID
    assert header.series_instance_uid == dataset.SeriesInstanceUID  # leading zeros kept as-is
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian
    assert header.modality == "MR"
    assert (header.rows, header.columns) == (dataset.Rows, dataset.Columns)
    assert header.image_position == tuple(float(v) for v in dataset.ImagePositionPatient)
    assert header.image_orientation == tuple(float(v) for v in dataset.ImageOrientationPatient)
    assert header.pixel_spacing == tuple(float(v) for v in dataset.PixelSpacing)
    assert header.trigger_time == float(dataset.TriggerTime)


def test_truncated_pixel_data_is_malformed(whole: bytes) -> None:
    """An instance cut inside its pixel data cannot be understood (0xC000)."""
    _refused(whole[: len(whole) - 1000], MalformedInstance, Status.CANNOT_UNDERSTAND)
    _refused(whole[:-1], MalformedInstance, Status.CANNOT_UNDERSTAND)


@pytest.mark.parametrize(
    ("keyword", "offset"),
    [
        ("ImagePositionPatient", 11),  # inside the value
        ("ImagePositionPatient", 3),  # inside the element header
        ("Rows", 5),  # inside the element header
        ("PixelData", 0),  # cut exactly before the pixel data element
        ("PixelData", 6),  # inside the pixel data element header
        ("PixelData", 10),  # inside its 4-byte length
    ],
)
def test_truncated_header_is_malformed(whole: bytes, keyword: str, offset: int) -> None:
    """An instance cut inside or right after its header cannot be understood (0xC000)."""
    cut = _start_of(whole, keyword) + offset
    _refused(whole[:cut], MalformedInstance, Status.CANNOT_UNDERSTAND)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(20))
def test_garbage_after_preamble_is_malformed(whole: bytes, seed: int) -> None:
    """Random bytes after a valid preamble and file meta cannot be understood (0xC000)."""
    rng = random.Random(seed)
    garbage = bytes(rng.getrandbits(8) for _ in range(rng.choice([7, 8, 64, 4096])))
    _refused(whole[: _meta_end(whole)] + garbage, MalformedInstance, Status.CANNOT_UNDERSTAND)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_garbage_instead_of_file_meta_is_malformed(whole: bytes) -> None:
    """Random bytes right after the preamble and ``DICM`` (no file meta) cannot be understood."""
    rng = random.Random(7)
    garbage = bytes(rng.getrandbits(8) for _ in range(2048))
    _refused(whole[:132] + garbage, MalformedInstance, Status.CANNOT_UNDERSTAND)


@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_missing_identifying_uid_is_malformed(whole: bytes, keyword: str) -> None:
    """A dataset without one of its four identifying UIDs cannot be understood (0xC000)."""
    _refused(_rewritten(whole, **{keyword: None}), MalformedInstance, Status.CANNOT_UNDERSTAND)


def test_sop_class_mismatch(whole: bytes) -> None:
    """A dataset whose SOP Class differs from the request's is refused with 0xA900."""
    dataset = pydicom.dcmread(BytesIO(whole))
    _refused(
        whole,
        SopClassMismatch,
        Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        expected_sop_class=CT_IMAGE_STORAGE,
        expected_sop_instance=str(dataset.SOPInstanceUID),
    )


def test_sop_instance_mismatch_is_malformed(whole: bytes) -> None:
    """A dataset whose SOP Instance UID differs from the request's Affected one is refused."""
    _refused(whole, MalformedInstance, Status.CANNOT_UNDERSTAND, expected_sop_instance="1.2.3.4")


def test_image_without_pixel_data_is_malformed(whole: bytes) -> None:
    """An image described by Rows, Columns and Bits Allocated but without Pixel Data is refused."""
    _refused(_rewritten(whole, PixelData=None), MalformedInstance, Status.CANNOT_UNDERSTAND)


def test_instance_without_image_attributes_needs_no_pixel_data(whole: bytes) -> None:
    """A non-image dataset (no Image Pixel Module) is accepted without Pixel Data."""
    stripped = _rewritten(
        whole, PixelData=None, Rows=None, Columns=None, BitsAllocated=None, BitsStored=None, HighBit=None
    )
    assert parse_instance(stripped).rows is None


PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "JPEG2000.dcm",
        "reportsi.dcm",
        "reportsi_with_empty_number_tags.dcm",
        "rtplan.dcm",
    ],
)
def test_whole_files_of_other_encodings_and_kinds_are_accepted(name: str) -> None:
    """Whole big-endian, deflated, JPEG 2000, SR (ending in sequences) and RT files parse."""
    path = PYDICOM_TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom test file {name} is not bundled")
    assert parse_instance(path.read_bytes()).sop_instance_uid


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_truncated_files_from_pydicom_are_malformed(name: str) -> None:
    """pydicom's own truncated samples cannot be understood (0xC000)."""
    path = PYDICOM_TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom test file {name} is not bundled")
    _refused(path.read_bytes(), MalformedInstance, Status.CANNOT_UNDERSTAND)


def _header_through_pydicom(data: bytes) -> dict[str, object]:
    """Every header attribute read through pydicom's own reader and conversion (the reference for the
    raw read)."""
    import node.dicom.instance as instance

    read = pydicom.dcmread(BytesIO(data), force=True)

    def slow(_walked: object, keyword: str, convert: object, many: bool = False) -> object:
        try:
            value = read.get(keyword)
            if value is None or value == "":
                return None
            return convert(value)  # type: ignore[operator]
        except Exception:  # noqa: BLE001 - as the parser: not convertible is absent
            return None

    original = instance._value
    instance._value = slow  # type: ignore[assignment]
    try:
        return vars(parse_instance(data))
    finally:
        instance._value = original


ODD_VALUES: list[dict[str, object]] = [
    {"SeriesNumber": "1.0", "InstanceNumber": " 7 ", "AcquisitionNumber": "99999999999"},
    {"TriggerTime": "1e2", "PixelSpacing": ["1.5", "1.5", "2"], "ImageOrientationPatient": ["1", "0", "0"]},
    {"ImageType": "ORIGINAL", "Modality": "", "NumberOfFrames": " "},
    {"ImagePositionPatient": ["-1.5", " 2", "1e400"], "TriggerTime": "inf", "SeriesNumber": ""},
    {"ImageType": ["ORIGINAL", " PRIMARY", "", "M "], "AcquisitionDate": "20120000", "StudyTime": "1010"},
    {"PixelSpacing": "0.7", "ImagePositionPatient": ["1", "2"], "InstanceNumber": "+3"},
    {"PatientName": "Doe^Jane^^Dr^ ", "PatientID": " ID 7 ", "SeriesDescription": "cine\\sax"},
    {"PatientName": "Yamada^Tarou=山田^太郎", "SpecificCharacterSet": ["", "ISO 2022 IR 87"]},
    {"PatientName": "Buc^Jérôme", "StudyDescription": "Cœur", "SpecificCharacterSet": "ISO_IR 192"},
    {"AccessionNumber": "", "StudyDescription": "  ", "PatientName": "A^B\\C^D"},
    {"PatientID": "A ", "SeriesDescription": "1.5", "StudyDate": "20120101"},
]


#: Values pydicom will not write, patched into the written bytes (same length): a name whose trailing
#: component groups are empty, which pydicom reads without them; a UID of whitespace, read as absent.
PATCHED_VALUES: list[tuple[dict[str, object], bytes, bytes]] = [
    ({"PatientName": "Doe^John^^"}, b"Doe^John^^", b"Doe^John=="),
    ({"PatientName": "Kim^^^^^^^"}, b"Kim^^^^^^^", b"=========="),
    ({"FrameOfReferenceUID": "1.2.3.45"}, b"1.2.3.45", b"\t\t\t\t\t\t\t\x00"),
]


@pytest.mark.parametrize("changes", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_header_read_from_raw_bytes_is_what_pydicom_reads(whole: bytes, changes: dict[str, object]) -> None:
    """The header's values, read from the raw bytes where the VR allows, equal those read through
    pydicom's conversion: on the whole instance and with odd values (numbers pydicom reads and Python
    does not, spaces, empty, a single value where several are expected and the other way round)."""
    assert vars(parse_instance(whole)) == _header_through_pydicom(whole)
    odd = _rewritten(whole, **changes)
    assert vars(parse_instance(odd)) == _header_through_pydicom(odd)


@pytest.mark.parametrize("changes, written, patched", PATCHED_VALUES, ids=range(len(PATCHED_VALUES)))
def test_header_read_from_raw_bytes_as_pydicom_reads_unwritable_values(
    whole: bytes, changes: dict[str, object], written: bytes, patched: bytes
) -> None:
    """Values pydicom normalises when it reads them (empty name groups, whitespace around a UID) give
    the header pydicom's conversion gives."""
    data = _rewritten(whole, **changes)
    assert data.count(written) == 1
    odd = data.replace(written, patched)
    assert vars(parse_instance(odd)) == _header_through_pydicom(odd)


def test_header_read_from_raw_bytes_in_other_encodings() -> None:
    """Big-endian and implicit VR files give the header pydicom's conversion gives."""
    for name in ("MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "CT_small.dcm"):
        path = PYDICOM_TEST_FILES / name
        if not path.is_file():
            pytest.skip(f"pydicom test file {name} is not bundled")
        data = path.read_bytes()
        assert vars(parse_instance(data)) == _header_through_pydicom(data), name


@pytest.mark.parametrize(
    ("keyword", "reason"),
    [("PixelData", "image attributes without pixel data"), ("Rows", "pixel data without Rows")],
    ids=["pixel_data", "rows"],
)
def test_a_repeated_attribute_is_read_as_pydicom_reads_it_the_last_one(
    whole: bytes, keyword: str, reason: str
) -> None:
    """An attribute repeated at the end as an empty sequence replaces the first for pydicom (and for
    the pipeline that reads the file later), so the image has no pixel data, or no Rows: refused."""
    tag = Tag(keyword)
    assert pydicom.dcmread(BytesIO(whole)).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    repeated = whole + struct.pack("<HH2s2xL", tag.group, tag.element, b"SQ", 0)
    assert isinstance(pydicom.dcmread(BytesIO(repeated))[tag].value, pydicom.Sequence)
    with pytest.raises(MalformedInstance, match=reason):
        parse_instance(repeated)
