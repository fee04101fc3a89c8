"""With debug logging on, the whole flow writes no patient identifier and no raw Study Instance UID.

The flow: DCMTK ``storescu`` sends a study whose patient fields carry distinctive values, the node
measures it and delivers the draft SR and secondary capture to a recording PACS, a radiologist signs
the result off through the worklist over HTTP, and the verified objects are delivered. Every line
the node and the CLI commands wrote is then searched for those values.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import httpx2 as httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import NodeServerFactory
from tests.delivery.peer import RecordingSCP
from tests.review.pipeline import subset
from tests.support import STORESCU, NodeServer, dicomnode_command, free_port, run_storescu, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(STORESCU).exists(), reason="DCMTK is not installed"),
]

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
#: Distinctive identifiers written into the sent copies (the Sunnybrook originals are anonymised).
IDENTIFIERS = {
    "PatientName": "Quokka^Wilhelmina^Ottilie",
    "PatientID": "MRN-7731-0042",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC-99812-Q",
}


def _identified_copies(sources: list[Path], folder: Path) -> tuple[list[Path], str]:
    """Copies of ``sources`` in a new study carrying :data:`IDENTIFIERS`; returns them and the UID."""
    folder.mkdir()
    study_uid = generate_uid()
    copies = []
    for path in sources:
        dataset = pydicom.dcmread(path)
        for keyword, value in IDENTIFIERS.items():
            setattr(dataset, keyword, value)
        dataset.StudyInstanceUID = study_uid
        copy = folder / path.name
        dataset.save_as(copy)
        copies.append(copy)
    return copies, study_uid


def _delivered(server: NodeServer, kinds: int) -> bool:
    with sqlite3.connect(f"file:{server.index_path}?mode=ro", uri=True, timeout=10) as connection:
        states = connection.execute("SELECT state FROM deliveries").fetchall()
    return len(states) >= kinds and {state for (state,) in states} == {"delivered"}


def _cli(server: NodeServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dicomnode_command(), *args],
        env=server.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _sign_through_the_worklist(web_port: int, result_id: str) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", follow_redirects=False) as client:
        form = client.get("/login")
        token = _CSRF.search(form.text)
        assert token is not None
        logged_in = client.post(
            "/login",
            data={"username": "reader", "password": PASSWORD, "csrf_token": token.group(1), "next": "/"},
        )
        assert logged_in.status_code == 303
        assert client.get("/worklist").status_code == 200
        page = client.get(f"/results/{result_id}")
        assert page.status_code == 200
        token = _CSRF.search(page.text)
        assert token is not None
        signed = client.post(f"/results/{result_id}/sign", data={"csrf_token": token.group(1)})
        assert signed.status_code == 303


def test_debug_logs_of_the_whole_flow_hold_no_patient_identifier(
    node_server: NodeServerFactory, sunnybrook: Path, tmp_path: Path
) -> None:
    """No PatientName, PatientID, PatientBirthDate, AccessionNumber or raw StudyInstanceUID is logged."""
    files, study_uid = _identified_copies(subset(sunnybrook), tmp_path / "sent")
    pacs = RecordingSCP(port=free_port()).start()
    web_port = free_port()
    destinations = json.dumps([{"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}])
    try:
        server = node_server(
            {
                "DICOMNODE_LOGGING__LEVEL": "DEBUG",
                "DICOMNODE_LOGGING__PYNETDICOM_LEVEL": "DEBUG",
                "DICOMNODE_PIPELINE__STABLE_SECONDS": "1",
                "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
                "DICOMNODE_DELIVERY__DESTINATIONS": destinations,
                "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
                "DICOMNODE_WEB__PORT": str(web_port),
            }
        )
        sent = run_storescu(server.port, files)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: _delivered(server, 2), 300, "the draft SR and SC delivered")

        cli_output = [
            _cli(
                server,
                "users", "add", "reader", "--role", "radiologist", "--full-name", "Reader^Rita",
                "--organization", "Test Radiology", "--password-stdin",
                stdin=f"{PASSWORD}\n{PASSWORD}\n",
            ),
            listed := _cli(server, "worklist", "list", "--json"),
        ]  # fmt: skip
        [row] = json.loads(listed.stdout)
        _sign_through_the_worklist(web_port, row["result_id"])
        wait_for(lambda: _delivered(server, 4), 120, "the verified SR and SC delivered")
        cli_output.append(_cli(server, "worklist", "show", row["result_id"]))
        assert server.terminate() == 0
    finally:
        pacs.stop()

    logged = server.log_path.read_text(errors="replace") + "".join(run.stderr for run in cli_output)
    debug_lines = [record for record in server.log_records() if record.get("level") == "debug"]
    assert debug_lines, "debug logging was not on"
    assert len(pacs.received) >= 4
    for keyword, value in {**IDENTIFIERS, "StudyInstanceUID": study_uid}.items():
        assert value not in logged, f"{keyword} appears in the logs"
    # The PACS did get them: the values were really in the flow, not lost before it.
    assert {str(dataset.PatientID) for dataset in pacs.datasets} == {IDENTIFIERS["PatientID"]}
