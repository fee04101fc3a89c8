"""Orthanc as the hospital PACS: a study sent to it reaches the node and its results come back to it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from node.reports.sr import read_report
from tests.conftest import NodeServerFactory
from tests.integration.orthanc import ORTHANC_AET, orthanc_binary, running_orthanc
from tests.support import (
    STORESCU,
    dicomnode_command,
    free_port,
    run_storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.data]

SERIES = "SCD0000301"
PASSWORD = "correct horse battery staple"


def _run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dicomnode_command(), *args], input=stdin, env=env, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip


def _of_class(
    instances: list[dict[str, Any]], sop_class: str, flag: str | None = None
) -> list[dict[str, Any]]:
    return [
        tags for tags in instances
        if tags.get("SOPClassUID") == sop_class and (flag is None or tags.get("VerificationFlag") == flag)
    ]  # fmt: skip


def test_orthanc_forwards_to_the_node_and_stores_draft_and_verified_results(
    node_server: NodeServerFactory, sunnybrook: Path, tmp_path: Path
) -> None:
    """MR sent to Orthanc is measured by the node; draft SR + SC, then the signed-off SR, land in Orthanc."""
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    if not Path(STORESCU).is_file():
        pytest.skip(f"DCMTK {STORESCU} is not installed")
    series_dir = sunnybrook / SERIES
    files = sorted(series_dir.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    orthanc_dicom_port = free_port()
    server = node_server(
        {
            # Orthanc relays instance by instance from its job queue; on a busy machine a pause of a
            # few seconds between two of them is normal, so the node waits its shipped quiet period
            # (10 s) rather than measuring a part of the series first.
            "DICOMNODE_PIPELINE__STABLE_SECONDS": "10",
            "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__DESTINATIONS": json.dumps(
                [{"ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc_dicom_port}]
            ),
            "DICOMNODE_WEB__PORT": str(free_port()),
        },
        start=False,
    )
    added = _run(
        ["users", "add", "jsmith", "--role", "radiologist", "--full-name", "Smith^Jane",
         "--organization", "St Elsewhere", "--password-stdin"],
        server.env, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    server.start()

    with running_orthanc(binary, tmp_path / "orthanc", orthanc_dicom_port, server.port) as orthanc:
        sent = run_storescu(orthanc.dicom_port, files, called_ae=ORTHANC_AET)
        assert sent.returncode == 0, sent.stderr

        def drafts() -> list[dict[str, Any]]:
            instances = orthanc.instances(study_uid)
            ready = _of_class(instances, Comprehensive3DSRStorage, "UNVERIFIED") and _of_class(
                instances, SecondaryCaptureImageStorage
            )
            return instances if ready else []

        instances = wait_for(drafts, 300, "the draft SR and the picture in Orthanc", poll_s=0.5)
        draft_tags = _of_class(instances, Comprehensive3DSRStorage, "UNVERIFIED")
        assert len(draft_tags) == 1
        assert draft_tags[0]["Modality"] == "SR"
        (study,) = orthanc.get("/studies?expand")  # one study: the results joined the MR study
        assert study["ID"] == draft_tags[0]["OrthancStudy"]
        modalities = {
            orthanc.get(f"/series/{series}")["MainDicomTags"]["Modality"] for series in study["Series"]
        }
        assert {"MR", "SR"} <= modalities and len(modalities) == 3, modalities
        draft = orthanc.dataset(draft_tags[0]["ID"])
        assert draft.StudyInstanceUID == study_uid

        measured = _run(["measure", str(series_dir), "--json"], server.env)
        assert measured.returncode == 0, measured.stderr
        (expected,) = json.loads(measured.stdout)
        values = read_report(draft).values
        assert values is not None
        assert (round(values.edv_ml, 1), round(values.esv_ml, 1)) == (expected["edv_ml"], expected["esv_ml"])

        listed = _run(["worklist", "list", "--json"], server.env)
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        signed = _run(
            ["worklist", "sign", str(row["result_id"]), "--user", "jsmith", "--password-stdin"],
            server.env,
            stdin=PASSWORD + "\n",
        )
        assert signed.returncode == 0, signed.stderr

        def verified() -> list[dict[str, Any]]:
            return _of_class(orthanc.instances(study_uid), Comprehensive3DSRStorage, "VERIFIED")

        (verified_tags,) = wait_for(verified, 120, "the VERIFIED SR in Orthanc", poll_s=0.5)
        assert verified_tags["OrthancStudy"] == draft_tags[0]["OrthancStudy"]
        sr = orthanc.dataset(verified_tags["ID"])
        assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
        assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Smith^Jane"
        predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert predecessor.ReferencedSOPInstanceUID == draft.SOPInstanceUID
        assert sr.StudyInstanceUID == study_uid
        assert server.indexed_count() == len(files), "Orthanc forwarded something besides the MR series"
