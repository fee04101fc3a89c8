"""Results back to a PACS on loopback: draft SR and SC arrive once each, across an outage and a restart."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from node.reports.codes import ReviewStatus
from node.reports.sr import read_report
from tests.conftest import NodeServerFactory
from tests.delivery.peer import RecordingSCP
from tests.support import dicomnode_command, free_port, run_storescu, wait_for
from tests.validation import dciodvfy, uids_of

pytestmark = pytest.mark.integration

SERIES = "SCD0000301"  # the smallest series: 10 slices x 20 phases


def _outbox_pending(server_index: Path) -> bool:
    with sqlite3.connect(server_index) as connection:
        rows = connection.execute("SELECT state, attempts FROM deliveries").fetchall()
    return len(rows) >= 2 and all(state == "pending" and attempts >= 1 for state, attempts in rows)


def test_results_reach_pacs_once_after_outage_and_restart_and_match_measure(
    node_server: NodeServerFactory, sunnybrook: Path, tmp_path: Path
) -> None:
    """With PACS down and a node restart, draft SR and SC still arrive once each, matching `measure`."""
    pacs_port = free_port()
    destinations = json.dumps([{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}])
    server = node_server(
        {
            "DICOMNODE_PIPELINE__STABLE_SECONDS": "2",
            "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__DESTINATIONS": destinations,
            "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__BACKOFF_INITIAL_S": "1",
            "DICOMNODE_DELIVERY__BACKOFF_MAX_S": "2",
        }
    )
    files = sorted((sunnybrook / SERIES).glob("*.dcm"))
    sent = run_storescu(server.port, files)
    assert sent.returncode == 0, sent.stderr

    wait_for(lambda: _outbox_pending(server.index_path), 300, "results waiting for the PACS that is down")
    assert server.terminate() == 0
    server.restart()

    pacs = RecordingSCP(port=pacs_port).start()
    try:
        wait_for(lambda: _all_delivered(server.index_path), 120, "the draft SR and the SC delivered")
    finally:
        pacs.stop()

    assert len(pacs.received) == len(set(pacs.received)) == 2, "an object arrived twice"
    by_class = {str(dataset.SOPClassUID): dataset for dataset in pacs.datasets}
    assert set(by_class) == {Comprehensive3DSRStorage, SecondaryCaptureImageStorage}
    sr, sc = by_class[Comprehensive3DSRStorage], by_class[SecondaryCaptureImageStorage]
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    for dataset in (sr, sc):
        assert dataset.StudyInstanceUID == source.StudyInstanceUID
        assert dataset.PatientID == source.PatientID
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    assert sc.BurnedInAnnotation == "YES"
    content = read_report(sr)
    assert content.review == ReviewStatus.PENDING
    assert content.values is not None

    measured = subprocess.run(
        [*dicomnode_command(), "measure", str(sunnybrook / SERIES), "--json"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    (stack,) = json.loads(measured.stdout)
    assert round(content.values.edv_ml, 1) == stack["edv_ml"]
    assert round(content.values.esv_ml, 1) == stack["esv_ml"]

    sources = uids_of([pydicom.dcmread(path, stop_before_pixels=True) for path in files])
    for name, dataset in (("sr", sr), ("sc", sc)):
        validation = dciodvfy(dataset, tmp_path / f"{name}.dcm", sources)
        assert validation.errors == (), validation.output


def _all_delivered(server_index: Path) -> bool:
    with sqlite3.connect(server_index) as connection:
        states = {row[0] for row in connection.execute("SELECT state FROM deliveries")}
    return states == {"delivered"}
