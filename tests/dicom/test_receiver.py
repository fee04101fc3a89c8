"""The durable DICOM receiver end to end: ``dicomnode serve`` on loopback against DCMTK and pynetdicom.

Every test starts its own node (fresh data directory, free port) and waits on deadlines, never on
sleeps. DCMTK is always called by absolute path: pynetdicom installs a ``storescu`` that shadows it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset

from node.dicom.status import Status
from node.store.index import Index
from tests.conftest import NodeServerFactory
from tests.support import (
    ECHOSCU,
    STORESCU,
    SUNNYBROOK_SERIES,
    NodeServer,
    acknowledged_files,
    dcmtk_env,
    dicomnode_command,
    file_dataset_bytes,
    receiver_only_env,
    run_echoscu,
    run_storescu,
    series_counts,
    storescu_command,
    sunnybrook_files,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (Path(STORESCU).exists() and Path(ECHOSCU).exists()), reason="DCMTK is not installed"
    ),
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IDENTIFIERS = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@pytest.fixture(params=[1, 2], ids=["1-receiver", "2-receivers"])
def receiver(node_server: NodeServerFactory, request: pytest.FixtureRequest) -> NodeServer:
    """A running node with default settings, listening in one process or in two receiver processes."""
    # The line per stored instance is at DEBUG (one study would otherwise log hundreds at INFO).
    return node_server(
        {
            **receiver_only_env(),
            "DICOMNODE_LOGGING__LEVEL": "DEBUG",
            "DICOMNODE_DICOM__RECEIVER_PROCESSES": str(request.param),
        }
    )


@pytest.fixture
def files(sunnybrook: Path) -> list[Path]:
    """The 700 Sunnybrook instances (three series)."""
    found = sunnybrook_files(sunnybrook)
    assert len(found) == sum(SUNNYBROOK_SERIES.values())
    return found


# -- helpers -------------------------------------------------------------------------------------


@contextmanager
def _index(server: NodeServer) -> Iterator[Index]:
    index = Index.open(f"sqlite:///{server.index_path}")
    try:
        yield index
    finally:
        index.close()


def _expected_series_counts(sent: list[Path]) -> dict[str, int]:
    return dict(
        Counter(str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID) for path in sent)
    )


def _assert_stored_intact(server: NodeServer, sent: list[Path]) -> None:
    """Each sent file is in the spool, readable, with the sent dataset bytes, and indexed there."""
    with _index(server) as index:
        indexed = index.instance_paths()
    for path in sent:
        stored = server.spool_path_of(path)
        assert stored.is_file(), f"{path.name} is not in the spool"
        assert file_dataset_bytes(stored) == file_dataset_bytes(path), f"{path.name} differs"
        dataset = pydicom.dcmread(stored)
        assert len(dataset.PixelData) == dataset.Rows * dataset.Columns * 2
        relative = stored.relative_to(server.spool_dir).as_posix()
        assert indexed.get(str(dataset.SOPInstanceUID)) == relative, f"{path.name} is not indexed"


def _index_rows(server: NodeServer) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(f"file:{server.index_path}?mode=ro", uri=True)) as connection:
        rows = connection.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    return [(str(uid), str(path)) for uid, path in rows]


@contextmanager
def _association(port: int, *, chunked: bool, calling_ae: str = "PYNETDICOM") -> Iterator[Association]:
    """A pynetdicom association offering MR and CT storage; ``chunked`` streams files undecoded."""
    ae = AE(calling_ae)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    association = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    try:
        assert association.is_established
        yield association
    finally:
        if association.is_established:
            association.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _store_status(association: Association, path: Path) -> Status:
    response = association.send_c_store(path)
    assert "Status" in response, "no C-STORE response"
    return Status(int(response.Status))


def _meta_end(path: Path) -> int:
    return int(split_dataset(path)[1])


# -- tests ---------------------------------------------------------------------------------------


def test_storescu_three_series_arrive_intact_and_indexed(receiver: NodeServer, files: list[Path]) -> None:
    """700 instances sent by DCMTK over one association are spooled byte-identical and indexed by series."""
    result = run_storescu(receiver.port, files)
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_stored_intact(receiver, files)
    with _index(receiver) as index:
        counts = series_counts(index)
    assert counts == _expected_series_counts(files)
    assert sorted(counts.values()) == sorted(SUNNYBROOK_SERIES.values())
    assert len(receiver.spool_files()) == len(files)
    assert receiver.log_events("instance refused") == []
    assert len(receiver.log_events("instance stored")) == len(files)


def test_log_carries_no_identifier_of_received_data(receiver: NodeServer, files: list[Path]) -> None:
    """After receiving a series, no patient, study, series or instance identifier appears in the log."""
    sent = files[:40]
    assert run_storescu(receiver.port, sent).returncode == 0
    log_text = receiver.log_path.read_text()
    for path in sent:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFIERS:
            value = str(header.get(keyword, "")).strip()
            if len(value) >= 4:
                assert value not in log_text, f"{keyword} appears in the log"


def test_echoscu_succeeds(receiver: NodeServer) -> None:
    """A DCMTK C-ECHO to the node succeeds."""
    result = run_echoscu(receiver.port)
    assert result.returncode == 0, result.stderr


def test_dicomnode_echo_command_succeeds(receiver: NodeServer) -> None:
    """``dicomnode echo 127.0.0.1 PORT --aec DICOMNODE`` against the node exits 0 and reports Success."""
    result = subprocess.run(
        [*dicomnode_command(), "echo", "127.0.0.1", str(receiver.port), "--aec", "DICOMNODE"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "0x0000" in result.stdout


def test_allow_list_admits_listed_callers_and_rejects_others(node_server: NodeServerFactory) -> None:
    """With ALLOWED_CALLERS, listed AE titles (and AE@host from that host) associate; others are rejected."""
    server = node_server(
        {
            **receiver_only_env(),
            "DICOMNODE_DICOM__ALLOWED_CALLERS": "PACS,MODALITY@127.0.0.1,REMOTE@10.1.2.3",
        }
    )
    admitted = {title: run_echoscu(server.port, calling_ae=title) for title in ("PACS", "MODALITY")}
    refused = {title: run_echoscu(server.port, calling_ae=title) for title in ("INTRUDER", "REMOTE")}
    for title, result in admitted.items():
        assert result.returncode == 0, f"{title} was not admitted: {result.stderr}"
    for title, result in refused.items():
        assert result.returncode != 0, f"{title} was admitted"
        assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    rejected = wait_for(
        lambda: [record["calling_ae"] for record in server.log_events("association rejected")],
        30,
        "the rejections in the log",
    )
    assert sorted(rejected) == ["INTRUDER", "REMOTE"]


def test_malformed_instances_are_refused_and_the_node_keeps_serving(
    receiver: NodeServer, files: list[Path], tmp_path: Path
) -> None:
    """Truncated, garbage, UID-less and mislabelled data each get their named failure status, one log
    line each, and the same and a next association still store valid instances."""
    source = files[0]
    data = source.read_bytes()
    meta_end = _meta_end(source)

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 5000])

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:meta_end] + random.Random(1).randbytes(20_000))

    no_uid = tmp_path / "no-sop-instance-uid.dcm"
    dataset = pydicom.dcmread(source)
    del dataset.SOPInstanceUID
    dataset.save_as(no_uid)

    mislabelled = tmp_path / "ct-meta-mr-dataset.dcm"
    dataset = pydicom.dcmread(source)
    dataset.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    dataset.save_as(mislabelled)

    expected = {
        truncated: Status.CANNOT_UNDERSTAND,
        garbage: Status.CANNOT_UNDERSTAND,
        no_uid: Status.CANNOT_UNDERSTAND,
        mislabelled: Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    }
    with _association(receiver.port, chunked=True) as association:
        statuses = {path: _store_status(association, path) for path in expected}
        same_association = _store_status(association, files[1])
    with _association(receiver.port, chunked=True) as association:
        next_association = _store_status(association, files[2])

    assert statuses == expected
    assert same_association is Status.SUCCESS
    assert next_association is Status.SUCCESS
    assert receiver.is_running()
    refused = receiver.log_events("instance refused")
    assert sorted(record["status"] for record in refused) == sorted(
        f"0x{int(status):04X}" for status in expected.values()
    )
    assert receiver.log_events("instance failed") == []
    assert set(receiver.spool_files()) == {receiver.spool_path_of(path) for path in files[1:3]}


def test_disk_floor_answers_out_of_resources_and_writes_nothing(
    node_server: NodeServerFactory, files: list[Path]
) -> None:
    """Below the free-disk floor, C-STORE answers Out of Resources (0xA700) and the spool stays empty."""
    server = node_server(
        {
            **receiver_only_env(),
            "DICOMNODE_STORAGE__MIN_FREE_MB": str(10**12),
            "DICOMNODE_LOGGING__LEVEL": "DEBUG",
        }
    )
    with _association(server.port, chunked=False) as association:
        statuses = [_store_status(association, path) for path in files[:2]]
    assert statuses == [Status.OUT_OF_RESOURCES, Status.OUT_OF_RESOURCES]
    assert server.spool_files() == []
    assert list((server.spool_dir / ".incoming").iterdir()) == []
    assert server.indexed_count() == 0
    assert server.is_running()


def test_same_instance_twice_is_acknowledged_twice_and_indexed_once(
    receiver: NodeServer, files: list[Path]
) -> None:
    """A resent SOP Instance (same and next association) is acknowledged each time and indexed once."""
    sent = files[5]
    first = run_storescu(receiver.port, [sent, sent], verbose=True)
    second = run_storescu(receiver.port, [sent], verbose=True)
    assert first.returncode == 0 and second.returncode == 0
    assert len(acknowledged_files(first.stdout + first.stderr)) == 2
    assert len(acknowledged_files(second.stdout + second.stderr)) == 1
    rows = _index_rows(receiver)
    assert len(rows) == 1
    assert rows[0][1] == receiver.spool_path_of(sent).relative_to(receiver.spool_dir).as_posix()
    duplicates = [record["duplicate"] for record in receiver.log_events("instance stored")]
    assert duplicates == [False, True, True]


def test_kill_9_mid_send_loses_no_acknowledged_instance(receiver: NodeServer, files: list[Path]) -> None:
    """After kill -9 in the middle of a 700-instance send, every instance the sender saw acknowledged is
    spooled, readable and indexed; resending everything completes with exactly one row per instance."""
    output = receiver.log_path.with_name("storescu-killed.log")
    with output.open("w") as sink:
        sender = subprocess.Popen(
            storescu_command(receiver.port, files, verbose=True),
            env=dcmtk_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: receiver.indexed_count() >= 250, 180, "250 indexed instances")
            receiver.kill9()
            sender.wait(timeout=60)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert sender.returncode != 0, "the send finished before the node was killed"
    acknowledged = acknowledged_files(output.read_text())
    assert 200 <= len(acknowledged) < len(files)

    receiver.restart()
    assert list((receiver.spool_dir / ".incoming").glob("*.part")) == []
    _assert_stored_intact(receiver, acknowledged)

    resend = run_storescu(receiver.port, files)
    assert resend.returncode == 0, resend.stderr[-2000:]
    rows = _index_rows(receiver)
    assert len(rows) == len(files)
    assert len({uid for uid, _ in rows}) == len(files)
    with _index(receiver) as index:
        assert series_counts(index) == _expected_series_counts(files)
    _assert_stored_intact(receiver, files)


def _assert_index_consistent(server: NodeServer) -> None:
    """Every index row has its spool file with that SOP Instance, every spool file has a row, and the
    per-study counts match."""
    with closing(sqlite3.connect(f"file:{server.index_path}?mode=ro", uri=True)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = connection.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
        study_counts = dict(connection.execute("SELECT study_instance_uid, instance_count FROM studies"))
        indexed_per_study = dict(
            connection.execute("SELECT study_instance_uid, count(*) FROM instances GROUP BY 1")
        )
    for uid, path in rows:
        stored = server.spool_dir / path
        assert stored.is_file()
        assert str(pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID) == uid
    assert sorted(server.spool_dir / path for _, path in rows) == server.spool_files()
    assert study_counts == indexed_per_study


def test_sigterm_mid_send_finishes_the_association_and_exits_0(
    node_server: NodeServerFactory, files: list[Path]
) -> None:
    """SIGTERM during a send lets the established association finish, exits 0, and leaves a
    consistent index holding every acknowledged instance."""
    server = node_server({**receiver_only_env(), "DICOMNODE_DICOM__SHUTDOWN_GRACE_S": "120"})
    series = files[-SUNNYBROOK_SERIES["SCD0000301"] :]
    output = server.log_path.with_name("storescu-terminated.log")
    with output.open("w") as sink:
        sender = subprocess.Popen(
            storescu_command(server.port, series, verbose=True),
            env=dcmtk_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: server.indexed_count() >= 20, 120, "20 indexed instances")
            exit_code = server.terminate(timeout_s=150)
            sender.wait(timeout=60)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert exit_code == 0, server.log_tail()
    assert sender.returncode == 0
    acknowledged = acknowledged_files(output.read_text())
    assert len(acknowledged) == len(series)
    _assert_index_consistent(server)
    assert server.indexed_count() == len(series)
    stopped = [record["unfinished_associations"] for record in server.log_events("listener stopped")]
    assert stopped and set(stopped) == {0}, "a listener (one per receiver process) left associations"


def _threads_accepting(pid: int, signum: int) -> list[int]:
    """Threads of a process that do not block ``signum`` (from ``SigBlk`` in /proc)."""
    accepting = []
    for tid in sorted(int(name) for name in os.listdir(f"/proc/{pid}/task")):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between the listing and the read (an association finishing)
        blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
        if not blocked & (1 << (signum - 1)):
            accepting.append(tid)
    return accepting


def _tgkill(pid: int, tid: int, signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux tgkill")
def test_sigterm_delivered_to_a_non_main_thread_still_stops_the_node(receiver: NodeServer) -> None:
    """A SIGTERM the kernel hands to a thread other than the main one still stops the node with exit 0."""
    assert run_echoscu(receiver.port).returncode == 0
    threads = [tid for tid in _threads_accepting(receiver.pid, signal.SIGTERM) if tid != receiver.pid]
    assert threads, "the node runs no thread besides the main one"
    delivered_to = None
    for tid in threads:
        try:
            _tgkill(receiver.pid, tid, signal.SIGTERM)
        except AttributeError as error:
            pytest.skip(f"tgkill unavailable: {error}")
        except OSError as error:
            if error.errno == errno.ESRCH:
                continue  # that thread ended meanwhile; the next one is as good
            raise
        delivered_to = tid
        break
    assert delivered_to is not None, "every non-main thread ended before the signal could be sent"
    assert receiver.process is not None
    assert receiver.process.wait(timeout=60) == 0, receiver.log_tail()
    assert receiver.log_events("stopped")
