"""Several receiver processes on one port: supervised by ``serve``, limits across them, and the spool
as the record of what was acknowledged."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association

from tests.conftest import NodeServerFactory
from tests.support import (
    ECHOSCU,
    STORESCU,
    NodeServer,
    acknowledged_files,
    file_dataset_bytes,
    receiver_only_env,
    run_storescu,
    send_concurrently,
    sunnybrook_files,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (Path(STORESCU).exists() and Path(ECHOSCU).exists()), reason="DCMTK is not installed"
    ),
]


def _receivers(server: NodeServer) -> set[int]:
    """Process ids of the serve process's receiver processes (its children other than
    multiprocessing's resource tracker)."""
    children: set[int] = set()
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # ended meanwhile
            if b"resource_tracker" not in command:
                children.add(int(pid))
    return children


@contextmanager
def _held(port: int, calling_ae: str) -> Iterator[Association]:
    ae = AE(calling_ae)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 30
    association = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    try:
        yield association
    finally:
        if association.is_established:
            association.release()


def _node(node_server: NodeServerFactory, **settings: str) -> NodeServer:
    return node_server(
        {
            **receiver_only_env(),
            "DICOMNODE_DICOM__RECEIVER_PROCESSES": "2",
            **{f"DICOMNODE_DICOM__{key.upper()}": value for key, value in settings.items()},
        }
    )


def test_a_killed_receiver_process_is_started_again_and_sigterm_stops_them_all(
    node_server: NodeServerFactory, sunnybrook: Path
) -> None:
    server = _node(node_server)
    wait_for(lambda: " ready\n" in server.log_path.read_text(), 60, "the start-up banner")
    first = _receivers(server)
    assert len(first) == 2
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    (died,) = wait_for(
        lambda: server.log_events("receiver process died: starting it again"), 60, "the restart"
    )
    assert died["exit_code"] == -signal.SIGKILL
    again = wait_for(
        lambda: len(_receivers(server)) == 2 and victim not in _receivers(server) and _receivers(server),
        60,
        "a new receiver in its place",
    )
    assert len(again & first) == 1
    wait_for(lambda: len(server.log_events("listening")) == 3, 60, "the new receiver listening")

    files = sunnybrook_files(sunnybrook)[:60]
    sent = run_storescu(server.port, files)
    assert sent.returncode == 0, sent.stderr
    assert server.indexed_count() == len(files)

    assert server.terminate() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in again), "a receiver outlived serve"
    assert len(server.log_events("listener stopped")) == 2


def test_association_limits_hold_across_receiver_processes(node_server: NodeServerFactory) -> None:
    """Per calling AE title and in all, the limits count the associations of both processes: with the
    kernel spreading connections over the two, eight attempts cannot all land in one process."""
    server = _node(node_server, max_associations="3", max_associations_per_caller="1")
    with _held(server.port, "HOLDER") as held:
        assert held.is_established
        for _ in range(8):
            with _held(server.port, "HOLDER") as refused:
                assert refused.is_rejected, "a second association of one caller in the other process"
        with _held(server.port, "SECOND") as second, _held(server.port, "THIRD") as third:
            assert second.is_established and third.is_established
            for _ in range(8):
                with _held(server.port, "FOURTH") as over:
                    assert over.is_rejected, "a fourth association beyond the limit of three"
    with _held(server.port, "HOLDER") as later, _held(server.port, "FOURTH") as fourth:
        assert later.is_established and fourth.is_established, "ended associations stayed counted"


def test_instances_whose_index_rows_were_lost_are_indexed_again_at_start_up(
    node_server: NodeServerFactory, sunnybrook: Path
) -> None:
    """The ingest commits without fsync (the fsync'd spool file is the record): a power cut may lose
    its last commits. Here the rows of acknowledged instances are removed from the index, as such a
    loss would leave it; at the next start every spool file the index lacks is indexed again."""
    server = _node(node_server)
    files = sunnybrook_files(sunnybrook)[:40]
    sent = run_storescu(server.port, files)
    assert sent.returncode == 0, sent.stderr
    assert server.terminate() == 0
    with closing(sqlite3.connect(server.index_path)) as connection, connection:
        connection.execute(
            "DELETE FROM instances WHERE sop_instance_uid IN "
            "(SELECT sop_instance_uid FROM instances ORDER BY received_at DESC LIMIT 15)"
        )
    assert server.indexed_count() == len(files) - 15
    server.start()
    (reconciled,) = server.log_events("spool files the index lacked")
    assert (reconciled["indexed"], reconciled["quarantined"]) == (15, 0)
    assert server.indexed_count() == len(files)


def test_the_same_instances_sent_at_once_to_both_processes_are_stored_once_and_intact(
    node_server: NodeServerFactory, sunnybrook: Path
) -> None:
    """Four senders send the same 30 instances at once; the kernel spreads them over both receiver
    processes, which meet on the same files: every send is acknowledged, each instance indexed once,
    its file holding the sent bytes (no process removes or replaces what another stored)."""
    server = _node(node_server)
    files = sunnybrook_files(sunnybrook)[:30]
    outputs = send_concurrently(server.port, [files] * 4)
    for output in outputs:
        assert sorted(acknowledged_files(output)) == sorted(files), output[-2000:]
    assert server.indexed_count() == len(files)
    for path in files:
        assert file_dataset_bytes(server.spool_path_of(path)) == file_dataset_bytes(path)
