"""DICOMweb both ways with a real DICOMweb server: Orthanc (Debian's orthanc-dicomweb plugin) sends a
series to the node by STOW-RS, and the node sends its draft SR and picture back to Orthanc by STOW-RS."""

from __future__ import annotations

import json
import subprocess
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from tests.conftest import NodeServerFactory
from tests.integration.orthanc import DICOMWEB_PLUGIN, orthanc_binary, running_orthanc
from tests.support import dicomnode_command, free_port, wait_for
from tests.web.stow_client import made_token

pytestmark = [pytest.mark.integration, pytest.mark.data]

SERIES = "SCD0000301"


def test_orthanc_sends_a_series_by_stow_rs_and_gets_the_results_back_by_stow_rs(
    node_server: NodeServerFactory, sunnybrook: Path, tmp_path: Path
) -> None:
    """Orthanc's DICOMweb client stores the series in the node (its token made with `dicomnode tokens
    add`); the node keeps every instance byte for byte, measures the study, and its DICOMweb
    destination (Orthanc's STOW-RS) receives the draft SR and the picture as the node stored them."""
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}: orthanc-dicomweb)")
    files = sorted((sunnybrook / SERIES).glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    orthanc_http = free_port()
    web_port = free_port()
    server = node_server(
        {
            # Orthanc sends the series in a few requests, one after the other.
            "DICOMNODE_PIPELINE__STABLE_SECONDS": "5",
            "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__DESTINATIONS": json.dumps(
                [{"dicomweb": f"http://127.0.0.1:{orthanc_http}/dicom-web", "send": ["sr", "sc"]}]
            ),
            "DICOMNODE_WEB__PORT": str(web_port),
        },
        start=False,
    )
    token = made_token(server.env, "orthanc")
    server.start()

    changes: dict[str, Any] = {
        "HttpPort": orthanc_http,
        "LuaScripts": [],  # nothing goes by DIMSE in this test
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {
                "dicomnode": {
                    "Url": f"http://127.0.0.1:{web_port}/dicomweb/",
                    "HttpHeaders": {"Authorization": f"Bearer {token}"},
                }
            },
        },
    }
    with running_orthanc(binary, tmp_path / "orthanc", free_port(), server.port, changes) as orthanc:
        originals = {}
        for path in files:
            data = path.read_bytes()
            stored = orthanc.post("/instances", data, "application/dicom")
            originals[str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
        series_id = stored["ParentSeries"]
        sent = orthanc.post(
            "/dicom-web/servers/dicomnode/stow",
            json.dumps({"Resources": [series_id], "Synchronous": True}).encode(),
        )
        assert sent is not None

        assert server.indexed_count() == len(files)
        kept = {
            str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path.read_bytes()
            for path in server.spool_files()
        }
        assert kept == originals, "the node did not keep the bytes Orthanc sent"

        def results() -> dict[str, list[dict[str, Any]]]:
            instances = orthanc.instances(study_uid)
            found = {
                "sr": [tags for tags in instances if tags.get("SOPClassUID") == Comprehensive3DSRStorage],
                "sc": [tags for tags in instances if tags.get("SOPClassUID") == SecondaryCaptureImageStorage],
            }
            return found if found["sr"] and found["sc"] else {}

        arrived = wait_for(results, 300, "the draft SR and the picture in Orthanc by STOW-RS", poll_s=0.5)
        (sr_tags,) = arrived["sr"]
        (sc_tags,) = arrived["sc"]
        assert sr_tags["VerificationFlag"] == "UNVERIFIED"
        for tags in (sr_tags, sc_tags):
            received = orthanc.dataset(tags["ID"])
            (outbox_file,) = (server.data_dir / "outbox").rglob(f"{received.SOPInstanceUID}.dcm")
            held = pydicom.dcmread(outbox_file)
            assert received.StudyInstanceUID == study_uid
            assert received == held, "Orthanc holds another dataset than the node sent"
        rows = json.loads(
            subprocess.run(
                [*dicomnode_command(), "deliveries", "list", "--json"], env=server.env, capture_output=True,
                text=True, timeout=120, check=True,
            ).stdout
        )  # fmt: skip
        assert {row["state"] for row in rows} == {"delivered"}
        assert {row["destination"] for row in rows} == {f"http://127.0.0.1:{orthanc_http}/dicom-web"}
