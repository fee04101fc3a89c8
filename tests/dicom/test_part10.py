"""The File Meta Information the receiver writes before each dataset, against pydicom's own writer."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from node.dicom.contexts import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.dicom.part10 import part10
from tests.support import file_dataset_bytes, sunnybrook_files


@pytest.mark.parametrize(
    ("sop_instance", "transfer_syntax"),
    [
        ("1.2.3.4", ImplicitVRLittleEndian),  # even length
        ("1.2.3.45", ExplicitVRLittleEndian),  # odd length: padded with a NUL
        ("2.25." + "9" * 59, JPEG2000Lossless),  # the longest UID (64 characters)
    ],
    ids=["even_uid", "odd_uid", "longest_uid"],
)
def test_the_header_is_what_pydicom_writes(sop_instance: str, transfer_syntax: str) -> None:
    """Byte for byte pydicom's encoding of the same File Meta Information (group length, padding of
    odd-length values, element order), naming the node as the implementation."""
    meta = create_file_meta(
        sop_class_uid=MRImageStorage,
        sop_instance_uid=sop_instance,
        transfer_syntax=transfer_syntax,
        implementation_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version=IMPLEMENTATION_VERSION_NAME,
    )
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + b"DATASET!"
    assert part10(MRImageStorage, sop_instance, transfer_syntax, b"DATASET!") == expected


def test_a_received_dataset_reads_back_whole(sunnybrook: Path) -> None:
    """A real instance's dataset behind the header reads back as the same dataset, its meta naming it."""
    path = sunnybrook_files(sunnybrook)[0]
    original = pydicom.dcmread(path)
    written = part10(
        original.SOPClassUID,
        original.SOPInstanceUID,
        original.file_meta.TransferSyntaxUID,
        file_dataset_bytes(path),
    )
    read = pydicom.dcmread(BytesIO(written))
    assert read.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert read.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert read.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert read == original
