"""One SOP Instance UID, one content: concurrent senders, index failures, a read-only spool and spool files
the index lacks never leave the spool and the index disagreeing."""

from __future__ import annotations

import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.clock import ManualClock
from node.dicom.instance import parse_instance
from node.dicom.status import Status, dimse_status
from node.errors import ConflictingInstance, NodeError, OutOfResources
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.spool import Spool
from tests.support import (
    NodeServer,
    acknowledged_files,
    free_port,
    receiver_only_env,
    send_concurrently,
    synthetic_mr,
)

PAIRS = 40


def _ingest(root: Path) -> tuple[Ingest, Spool, Index]:
    spool = Spool(root / "spool")
    index = Index.open(f"sqlite:///{root / 'index.sqlite3'}")
    return Ingest(spool, index, ManualClock(), IngestLimits(min_free_bytes=0)), spool, index


def _variant(sop_uid: str, study_uid: str, **attributes: object) -> bytes:
    """The synthetic MR instance under ``sop_uid`` in ``study_uid``, with some attributes changed."""
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
    dataset.StudyInstanceUID = study_uid
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _agreement(spool: Spool, index: Index) -> tuple[list[str], list[str]]:
    """(SOP UIDs whose file's study differs from the index row's, spool files without an index row)."""
    indexed = index.instance_paths()
    with index.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT sop_instance_uid, study_instance_uid FROM instances").all()
    studies = {str(uid): str(study) for uid, study in rows}
    disagree = [
        uid
        for uid, path in indexed.items()
        if str(pydicom.dcmread(spool.root / path, stop_before_pixels=True).StudyInstanceUID) != studies[uid]
    ]
    orphans = sorted(p.as_posix() for p in spool.files() if p.as_posix() not in set(indexed.values()))
    return disagree, orphans


def test_the_same_uid_sent_concurrently_with_other_content_keeps_the_first_and_refuses_the_second(
    tmp_path: Path,
) -> None:
    """40 pairs, each sent at the same moment by two threads with different studies: per UID one
    content is stored and indexed together, the other sender gets 0x0111, no file is left unindexed."""
    ingest, spool, index = _ingest(tmp_path)
    pairs = [
        (_variant(uid, "1.2.826.0.1.3680043.10.501"), _variant(uid, "1.2.826.0.1.3680043.10.502"))
        for uid in (generate_uid() for _ in range(PAIRS))
    ]
    barrier = threading.Barrier(2)

    def send(data: bytes) -> int:
        barrier.wait()
        try:
            ingest.store(data)
        except NodeError as error:
            return int(dimse_status(error))
        return int(Status.SUCCESS)

    with ThreadPoolExecutor(2) as pool:
        outcomes = [sorted(pool.map(send, pair)) for pair in pairs]
    try:
        assert outcomes == [[Status.SUCCESS, Status.DUPLICATE_SOP_INSTANCE]] * PAIRS
        assert _agreement(spool, index) == ([], [])
    finally:
        index.close()


def test_a_byte_identical_resend_is_a_duplicate_and_other_content_is_refused(tmp_path: Path) -> None:
    """A resend with the same bytes is acknowledged; the same UID with other bytes gets 0x0111."""
    ingest, spool, index = _ingest(tmp_path)
    uid = generate_uid()
    first = _variant(uid, "1.2.826.0.1.3680043.10.503")
    assert not ingest.store(first).duplicate
    assert ingest.store(first).duplicate
    with pytest.raises(ConflictingInstance) as refused:
        ingest.store(_variant(uid, "1.2.826.0.1.3680043.10.503", PatientComments="corrected"))
    assert dimse_status(refused.value) == Status.DUPLICATE_SOP_INSTANCE
    [path] = spool.root.rglob("*.dcm")
    assert path.read_bytes() == first
    index.close()


@pytest.mark.integration
def test_two_dcmtk_senders_racing_on_the_same_uids_leave_index_and_files_agreeing(tmp_path: Path) -> None:
    """Two storescu associations send the same 40 SOP Instance UIDs with different studies at once; each
    UID is acknowledged once and its file matches its index row."""
    uids = [generate_uid() for _ in range(PAIRS)]
    folders = []
    for name, study in (("a", "1.2.826.0.1.3680043.10.504"), ("b", "1.2.826.0.1.3680043.10.505")):
        folder = tmp_path / name
        folder.mkdir()
        for number, uid in enumerate(uids):
            (folder / f"{number:03d}.dcm").write_bytes(_variant(uid, study))
        folders.append(sorted(folder.iterdir()))
    server = NodeServer(
        data_dir=tmp_path / "data",
        log_path=tmp_path / "node.log",
        port=free_port(),
        extra_env={**receiver_only_env(), "DICOMNODE_WEB__ENABLED": "false"},
    ).start()
    try:
        outputs = send_concurrently(server.port, folders, timeout_s=120, options=["-nh"])
    finally:
        server.stop()
    acknowledged = [len(acknowledged_files(output)) for output in outputs]
    assert sum(acknowledged) == PAIRS, acknowledged
    assert sum(output.count("Received Store Response (Unknown Status: 0x111)") for output in outputs) == PAIRS
    index = Index.open(f"sqlite:///{server.index_path}")
    try:
        assert _agreement(Spool(server.spool_dir), index) == ([], [])
    finally:
        index.close()


def test_an_index_failure_leaves_nothing_in_the_spool(tmp_path: Path) -> None:
    """While the index is locked by another writer, the sender gets 0xA700 and no file stays behind."""
    _, spool, index = _ingest(tmp_path)
    index.engine.dispose()
    locker = sqlite3.connect(tmp_path / "index.sqlite3", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    short = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}?timeout=0.2")
    try:
        with short.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA busy_timeout=200")
    except Exception:  # noqa: BLE001 - the lock may already refuse this
        pass
    fast = Ingest(spool, short, ManualClock(), IngestLimits(min_free_bytes=0))
    try:
        with pytest.raises(OutOfResources, match="index unavailable"):
            fast.store(_variant(generate_uid(), "1.2.826.0.1.3680043.10.506"))
        assert list(spool.files()) == []
    finally:
        locker.rollback()
        locker.close()
        short.close()
        index.close()


def test_a_series_number_no_integer_string_can_hold_is_stored_as_unknown(tmp_path: Path) -> None:
    """SeriesNumber 99999999999999999999 (outside IS, and any INTEGER column) is indexed as absent."""
    ingest, spool, index = _ingest(tmp_path)
    data = _variant(generate_uid(), "1.2.826.0.1.3680043.10.507", SeriesNumber="99999999999999999999")
    stored = ingest.store(data)
    assert stored.header.series_number is None
    [path] = spool.root.rglob("*.dcm")
    assert path.read_bytes() == data  # the file keeps the value as received
    index.close()


def test_a_failed_write_is_out_of_resources_not_a_processing_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (read-only file system, as a remount gives) answers 0xA700 and leaves nothing."""
    ingest, spool, index = _ingest(tmp_path)

    def read_only(*_args: object, **_kwargs: object) -> int:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutOfResources, match="spool not writable: Read-only file system"):
        ingest.store(_variant(generate_uid(), "1.2.826.0.1.3680043.10.509"))
    monkeypatch.undo()
    assert list(spool.files()) == [] and index.instance_paths() == {}
    index.close()


def test_start_up_indexes_spool_files_the_index_lacks_and_quarantines_the_rest(tmp_path: Path) -> None:
    """A file written before a kill (not indexed) is indexed; garbage and a second copy are quarantined."""
    ingest, spool, index = _ingest(tmp_path)
    kept = ingest.store(_variant(generate_uid(), "1.2.826.0.1.3680043.10.510"))
    lost_uid = generate_uid()
    lost = _variant(lost_uid, "1.2.826.0.1.3680043.10.510")
    series = parse_instance(lost).series_instance_uid
    lost_path = spool.relative_path("1.2.826.0.1.3680043.10.510", series, lost_uid)
    spool.write(lost_path, lost)
    spool.write(Path("1.2.3/4.5/garbage.dcm"), b"not DICOM")
    copy = Path("1.2.826.0.1.3680043.10.999", "9.9", kept.header.sop_instance_uid + ".dcm")
    spool.write(copy, (spool.root / index.instance_paths()[kept.header.sop_instance_uid]).read_bytes())

    assert ingest.reconcile(tmp_path / "quarantine") == (1, 2)
    assert index.instance_paths()[lost_uid] == lost_path.as_posix()
    assert sorted(
        p.relative_to(tmp_path / "quarantine").as_posix()
        for p in (tmp_path / "quarantine").rglob("*")
        if p.is_file()
    ) == sorted([copy.as_posix(), "1.2.3/4.5/garbage.dcm"])
    assert ingest.reconcile(tmp_path / "quarantine") == (0, 0)
    index.close()


def test_studies_receiving_when_the_node_died_wait_one_quiet_period_after_the_restart(tmp_path: Path) -> None:
    """At start-up a study still receiving counts as last received then, so a short STABLE_SECONDS
    cannot measure a study cut by kill -9 before its sender resumes."""
    clock = ManualClock()
    spool = Spool(tmp_path / "spool")
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    Ingest(spool, index, clock, IngestLimits(min_free_bytes=0)).store(
        _variant(generate_uid(), "1.2.826.0.1.3680043.10.511")
    )
    clock.advance(timedelta(hours=1).total_seconds())
    assert index.restart_quiet_periods(clock.now()) == 1
    with index.engine.connect() as connection:
        (last,) = connection.exec_driver_sql("SELECT last_received_at FROM studies").one()
    assert str(last).startswith(clock.now().strftime("%Y-%m-%d %H:%M"))
    index.close()


def test_an_index_call_that_fails_after_its_commit_keeps_the_file_and_acknowledges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that went through although its call failed (a connection lost at COMMIT) is a stored
    instance: the file stays with its row, and the sender is told Success, not to send it again."""
    ingest, spool, index = _ingest(tmp_path)
    original = index.add_instance

    def committed_then_lost(*args: object, **kwargs: object) -> bool:
        original(*args, **kwargs)  # type: ignore[arg-type]
        raise sqlite3.OperationalError("connection lost after COMMIT")

    monkeypatch.setattr(index, "add_instance", committed_then_lost)
    stored = ingest.store(_variant(generate_uid(), "1.2.826.0.1.3680043.10.512"))
    assert not stored.duplicate
    [path] = spool.files()
    assert index.instance_paths() == {stored.header.sop_instance_uid: path.as_posix()}
    index.close()


def test_a_resend_restores_a_held_file_that_went_missing(tmp_path: Path) -> None:
    """An indexed instance whose file was lost is written again from a resend, acknowledged as a duplicate."""
    ingest, spool, index = _ingest(tmp_path)
    data = _variant(generate_uid(), "1.2.826.0.1.3680043.10.513")
    ingest.store(data)
    [path] = spool.files()
    (spool.root / path).unlink()
    assert ingest.store(data).duplicate
    assert (spool.root / path).read_bytes() == data
    index.close()
