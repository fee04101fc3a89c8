"""SIGKILL at every stage, then a restart: nothing received is lost, each study version is measured
once, and the PACS gets each report object under one SOP Instance UID.

The node kills itself with a real SIGKILL at a named failpoint (:mod:`node.failpoints`), so each
test crashes exactly at the boundary it names instead of hoping a timed kill lands there. The PACS
is a recording pynetdicom SCP on loopback; the sender is DCMTK ``storescu``.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from node.failpoints import ENV as FAILPOINT_ENV
from tests.conftest import NodeServerFactory
from tests.delivery.peer import RecordingSCP
from tests.review.pipeline import subset
from tests.support import STORESCU, NodeServer, free_port, run_storescu, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(STORESCU).exists(), reason="DCMTK is not installed"),
]

REPORT_OBJECTS = 2  # the draft SR and the secondary capture

#: stage -> failpoint
STAGES = {
    "receiving, file durable but not indexed": "ingest:written",
    "receiving, indexed but not acknowledged": "ingest:indexed",
    "waiting for stability": "jobs:ready",
    "inference": "worker:measured",
    "report building": "publisher:partial",
    "delivery": "sender:sent",
}


def _query(server: NodeServer, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{server.index_path}?mode=ro", uri=True, timeout=10) as connection:
        return connection.execute(sql).fetchall()


def _current_result(server: NodeServer) -> str | None:
    """The id of the study's measured result that nothing supersedes, if there is one yet."""
    rows = _query(server, "SELECT id FROM results WHERE outcome = 'measured' AND NOT superseded")
    return str(rows[0][0]) if len(rows) == 1 else None


def _reported(server: NodeServer) -> bool:
    """The current result's report objects are in the outbox and every delivery is done."""
    current = _current_result(server)
    if current is None:
        return False
    objects = _query(server, f"SELECT count(*) FROM outbox WHERE result_id = '{current}'")
    states = {state for (state,) in _query(server, "SELECT state FROM deliveries")}
    return objects == [(REPORT_OBJECTS,)] and states == {"delivered"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_at_a_stage_loses_nothing_and_reports_once(
    stage: str, node_server: NodeServerFactory, sunnybrook: Path
) -> None:
    """A SIGKILL at the stage's boundary, a restart and a resend end with one measured version and
    each report object at the PACS under one SOP Instance UID."""
    failpoint = STAGES[stage]
    pacs = RecordingSCP(port=free_port()).start()
    destinations = json.dumps([{"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}])
    settings = {
        "DICOMNODE_PIPELINE__STABLE_SECONDS": "1",
        "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
        "DICOMNODE_PIPELINE__RETRY_SECONDS": "1",  # the job killed mid-inference runs again soon
        "DICOMNODE_DELIVERY__DESTINATIONS": destinations,
        "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
        "DICOMNODE_DELIVERY__BACKOFF_INITIAL_S": "1",
        "DICOMNODE_WEB__ENABLED": "false",
        # The node as one process, so that a failpoint while receiving stops the whole node; a
        # receiver process that dies alone is started again (tests/dicom/test_receiver_processes.py).
        "DICOMNODE_DICOM__RECEIVER_PROCESSES": "1",
    }
    files = subset(sunnybrook)
    try:
        server = node_server({**settings, FAILPOINT_ENV: failpoint})
        run_storescu(server.port, files)  # fails part-way for the receiving stages
        wait_for(lambda: not server.is_running(), 300, f"the node to reach {failpoint}")
        assert server.process is not None and server.process.returncode == -signal.SIGKILL
        reached = server.log_events("failpoint reached: killing the process")
        assert [record["failpoint"] for record in reached] == [failpoint]

        server.extra_env = settings
        server.restart()
        resent = run_storescu(server.port, files)  # a sender resends what was not acknowledged
        assert resent.returncode == 0, resent.stderr
        wait_for(lambda: _reported(server), 300, "the report objects delivered")
    finally:
        pacs.stop()

    assert server.indexed_count() == len(files), "an instance was lost or indexed twice"
    stored = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in server.spool_files()}
    assert stored == {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files}

    # A resend after a restart may reopen the study (a new version, PS: the readiness rule), but
    # each version is processed once and yields one result per stack.
    jobs = _query(server, "SELECT version, state FROM jobs ORDER BY version")
    assert jobs == [(version, "done") for version in range(1, len(jobs) + 1)]
    per_version = _query(server, "SELECT version, count(*) FROM results GROUP BY version ORDER BY version")
    assert per_version == [(version, 1) for version, _ in jobs], "a version was measured twice"
    [(latest, outcome, superseded)] = _query(
        server, "SELECT version, outcome, superseded FROM results ORDER BY version DESC LIMIT 1"
    )
    assert (latest, outcome, superseded) == (len(jobs), "measured", 0)

    outbox = {uid for (uid,) in _query(server, "SELECT sop_instance_uid FROM outbox")}
    assert set(pacs.received) == outbox, "the PACS got an object the node does not know, or lacks one"
    repeats = [uid for uid, count in Counter(pacs.received).items() if count > 1]
    if failpoint == "sender:sent":
        # The PACS acknowledged the object, the node died before recording it: resent under the
        # same SOP Instance UID, which the PACS stores as the same object.
        assert len(repeats) <= 1 and all(Counter(pacs.received)[uid] == 2 for uid in repeats)
    else:
        assert repeats == [], "an object arrived twice"
