"""A radiologist signs off in Chromium on a running node; PACS receives the verified SR and picture."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from tests.conftest import NodeServerFactory
from tests.delivery.peer import RecordingSCP
from tests.support import dicomnode_command, free_port, run_storescu, wait_for
from tests.validation import dciodvfy, uids_of
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, missing

pytestmark = pytest.mark.integration

SERIES = "SCD0000301"
PASSWORD = "correct horse battery staple"


def _result_id(index: Path) -> str | None:
    with sqlite3.connect(index) as connection:
        row = connection.execute("SELECT id FROM results WHERE outcome = 'measured'").fetchone()
    return str(row[0]) if row else None


def test_browser_sign_off_reaches_pacs_as_a_verified_sr(
    node_server: NodeServerFactory, sunnybrook: Path, tmp_path: Path
) -> None:
    """Log in, open the worklist and the study, sign off: PACS gets a VERIFIED SR citing the draft."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    pacs = RecordingSCP(port=free_port()).start()
    web_port = free_port()
    server = node_server(
        {
            "DICOMNODE_PIPELINE__STABLE_SECONDS": "2",
            "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__DESTINATIONS": json.dumps(
                [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
            ),
            "DICOMNODE_WEB__PORT": str(web_port),
        },
        start=False,
    )
    added = subprocess.run(
        [*dicomnode_command(), "users", "add", "jsmith", "--role", "radiologist", "--full-name",
         "Smith^Jane", "--organization", "St Elsewhere Hospital", "--password-stdin"],
        input=PASSWORD + "\n", env=server.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    server.start()
    try:
        files = sorted((sunnybrook / SERIES).glob("*.dcm"))
        assert run_storescu(server.port, files).returncode == 0
        wait_for(lambda: len(pacs.received) >= 2, 300, "the draft SR and SC at the PACS")
        draft = next(d for d in pacs.datasets if d.SOPClassUID == Comprehensive3DSRStorage)
        result_id = wait_for(lambda: _result_id(server.index_path), 30, "the result")

        base = f"http://127.0.0.1:{web_port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/worklist")
            page.fill("input[name=username]", "jsmith")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/worklist")
            page.click(f"a[href='/results/{result_id}']")
            page.wait_for_url(f"{base}/results/{result_id}")
            page.click("button:has-text('Sign off')")
            page.wait_for_url(f"{base}/results/{result_id}")
            browser.close()

        wait_for(lambda: len(pacs.received) >= 4, 120, "the verified SR and SC at the PACS")
    finally:
        pacs.stop()

    verified = [d for d in pacs.datasets if d.SOPClassUID == Comprehensive3DSRStorage and d is not draft]
    assert len(verified) == 1
    sr = verified[0]
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == draft.SOPInstanceUID
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Smith^Jane"
    assert observer.VerifyingOrganization == "St Elsewhere Hospital"
    assert sr.StudyInstanceUID == draft.StudyInstanceUID
    sources = uids_of([pydicom.dcmread(path, stop_before_pixels=True) for path in files])
    validation = dciodvfy(sr, tmp_path / "verified.dcm", sources)
    assert validation.errors == (), validation.output
    pictures = [d for d in pacs.datasets if d.SOPClassUID == SecondaryCaptureImageStorage]
    assert len(pictures) == 2, "the draft picture and the verified one"
    assert len(set(pacs.received)) == len(pacs.received), "an object arrived twice"
