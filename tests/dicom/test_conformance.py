"""The conformance statement is the code's own (no drift), and a running node negotiates what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE

from node.conformance import conformance_statement
from node.dicom.contexts import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.conftest import NodeServerFactory
from tests.support import REPO_ROOT, STORESCU, run_echoscu, run_storescu

STATEMENT = REPO_ROOT / "docs" / "conformance-statement.md"
#: Not storage SOP classes: a node that accepted them would contradict its statement.
NOT_LISTED = ("1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.31", "1.2.826.0.1.3680043.9.9999.1")


def _listed_storage() -> list[str]:
    annex = conformance_statement().split("## Annex A", 1)[1]
    return re.findall(r"\| `([0-9.]+)` \|", annex)


def test_the_committed_statement_is_what_the_code_says() -> None:
    """docs/conformance-statement.md equals ``dicomnode conformance`` (regenerate it after a change)."""
    assert STATEMENT.read_text(encoding="utf-8") == conformance_statement(), (
        "regenerate: dicomnode conformance > docs/conformance-statement.md"
    )


@pytest.mark.integration
def test_a_running_node_accepts_exactly_the_listed_contexts(node_server: NodeServerFactory) -> None:
    """Every storage class of Annex A is accepted with each listed transfer syntax; classes not listed
    are rejected; DCMTK's echoscu succeeds (Verification is listed)."""
    server = node_server()
    listed = _listed_storage()
    assert len(listed) > 100 and MRImageStorage in listed
    assert run_echoscu(server.port).returncode == 0
    ae = AE(ae_title="CONFORMANCE")
    accepted: set[str] = set()
    rejected: set[str] = set()
    proposals = [*listed, *NOT_LISTED]
    for start in range(0, len(proposals), 120):
        ae.requested_contexts = []
        for uid in proposals[start : start + 120]:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian])
        association = ae.associate("127.0.0.1", server.port, ae_title="DICOMNODE")
        assert association.is_established
        assert (
            association.acceptor.implementation_class_uid,
            association.acceptor.implementation_version_name,
        ) == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
        accepted |= {str(context.abstract_syntax) for context in association.accepted_contexts}
        rejected |= {str(context.abstract_syntax) for context in association.rejected_contexts}
        association.release()
    assert accepted == set(listed)
    assert rejected == set(NOT_LISTED)
    assert not (set(NOT_LISTED) & set(listed))


@pytest.mark.integration
def test_dcmtk_storescu_is_refused_a_class_the_statement_does_not_list(
    node_server: NodeServerFactory, sunnybrook: Path, tmp_path: Path
) -> None:
    """A file of a listed class is stored; the same file relabelled with an unlisted class finds no
    presentation context (storescu fails), as the statement says."""
    if not Path(STORESCU).is_file():
        pytest.skip(f"DCMTK {STORESCU} is not installed")
    server = node_server()
    source = sorted((sunnybrook / "SCD0000101").glob("*.dcm"))[0]
    assert run_storescu(server.port, [source]).returncode == 0
    dataset = pydicom.dcmread(source)
    dataset.SOPClassUID = NOT_LISTED[2]
    dataset.file_meta.MediaStorageSOPClassUID = NOT_LISTED[2]
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    relabelled = tmp_path / "unlisted.dcm"
    dataset.save_as(relabelled, enforce_file_format=True)
    refused = run_storescu(server.port, [relabelled])
    assert refused.returncode != 0
    assert "presentation context" in (refused.stdout + refused.stderr).lower()
    assert server.indexed_count() == 1
