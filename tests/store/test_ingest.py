"""Ingest: check, write durably, index; a resend is stored once; nothing is written when refused."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.clock import ManualClock
from node.dicom.instance import InstanceHeader
from node.dicom.status import Status, dimse_status
from node.domain import Outcome
from node.errors import ConflictingInstance, MalformedInstance, OutOfResources
from node.store import ingest as ingest_module
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.jobs import JobQueue
from node.store.spool import Spool
from tests.support import series_counts, synthetic_mr


def _ingest(tmp_path: Path, min_free_bytes: int = 0, **limits: int) -> tuple[Ingest, Spool, Index]:
    spool = Spool(tmp_path / "spool")
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    return Ingest(spool, index, ManualClock(), IngestLimits(min_free_bytes, **limits)), spool, index


def _instance_of(study_instance_uid: str) -> bytes:
    """A new synthetic instance (own SOP Instance UID) in the given study."""
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    dataset.StudyInstanceUID = study_instance_uid
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _spooled(spool: Spool) -> list[Path]:
    return sorted(spool.root.rglob("*.dcm"))


def test_store_writes_the_bytes_as_received_and_indexes_them(tmp_path: Path) -> None:
    """A stored instance is in the spool byte for byte and indexed under its relative path."""
    ingest, spool, index = _ingest(tmp_path)
    data = synthetic_mr()
    stored = ingest.store(data, calling_ae="MODALITY")
    assert not stored.duplicate
    [path] = _spooled(spool)
    assert path.read_bytes() == data
    assert index.instance_paths() == {stored.header.sop_instance_uid: path.relative_to(spool.root).as_posix()}
    assert series_counts(index) == {stored.header.series_instance_uid: 1}
    index.close()


def test_resend_is_a_duplicate_stored_once(tmp_path: Path) -> None:
    """The same SOP Instance stored twice is reported as a duplicate and indexed once."""
    ingest, spool, index = _ingest(tmp_path)
    data = synthetic_mr()
    assert not ingest.store(data).duplicate
    assert ingest.store(data).duplicate
    assert len(_spooled(spool)) == 1
    assert len(index.instance_paths()) == 1
    index.close()


def test_disk_floor_refuses_without_writing(tmp_path: Path) -> None:
    """Under the free-disk floor, store raises Out of Resources (0xA700) and writes nothing."""
    ingest, spool, index = _ingest(tmp_path, min_free_bytes=2**62)
    with pytest.raises(OutOfResources) as raised:
        ingest.store(synthetic_mr())
    assert dimse_status(raised.value) is Status.OUT_OF_RESOURCES
    assert _spooled(spool) == []
    assert list((spool.root / ".incoming").iterdir()) == []
    assert index.instance_paths() == {}
    index.close()


def test_malformed_data_is_refused_without_writing(tmp_path: Path) -> None:
    """A truncated instance raises Cannot Understand (0xC000) and leaves spool and index empty."""
    ingest, spool, index = _ingest(tmp_path)
    with pytest.raises(MalformedInstance):
        ingest.store(synthetic_mr()[:-10])
    assert _spooled(spool) == []
    assert list((spool.root / ".incoming").iterdir()) == []  # its staged bytes went too
    assert index.instance_paths() == {}
    index.close()


def _other_content(data: bytes) -> bytes:
    """The same instance (same UIDs) with another value in it."""
    dataset = pydicom.dcmread(BytesIO(data))
    dataset.SeriesDescription = "another content"
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("disk", ["under the floor", "not writable"])
def test_what_is_wrong_with_an_instance_or_a_resend_is_answered_as_such_whatever_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk: str
) -> None:
    """With the disk under its floor or failing writes, a malformed instance is still refused as
    malformed (0xC000), other content under a held UID as a conflict (0x0111), a byte-identical
    resend still acknowledged; only a new instance gets Out of Resources (0xA700). Nothing is written."""
    held = synthetic_mr()
    ingest, spool, index = _ingest(tmp_path)
    ingest.store(held)
    if disk == "under the floor":
        ingest = Ingest(spool, index, ManualClock(), IngestLimits(min_free_bytes=2**62))
    else:

        def full_disk(_fd: int, _data: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("node.store.spool.os.write", full_disk)
    with pytest.raises(MalformedInstance):
        ingest.store(held[:-10])
    with pytest.raises(ConflictingInstance):
        ingest.store(_other_content(held))
    assert ingest.store(held).duplicate
    with pytest.raises(OutOfResources) as refused:
        ingest.store(_instance_of("1.2.826.0.1.3680043.10.509"))
    monkeypatch.undo()
    reason = "free disk below the configured floor" if disk == "under the floor" else "spool not writable"
    assert str(refused.value).startswith(reason)
    assert len(_spooled(spool)) == 1 and list((spool.root / ".incoming").iterdir()) == []
    assert len(index.instance_paths()) == 1
    index.close()


def test_a_stopped_ingest_still_stores_what_reaches_it(tmp_path: Path) -> None:
    """After close (the listener stopping), an instance still in flight is parsed on its own thread
    and stored, not failed."""
    ingest, spool, index = _ingest(tmp_path)
    ingest.close()
    assert not ingest.store(synthetic_mr()).duplicate
    assert len(_spooled(spool)) == 1
    index.close()


def test_the_header_is_parsed_while_the_bytes_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse runs on another thread than the caller's and need not wait for the durable write of
    the staged file to end; the instance is linked into the spool and indexed only once both are done.

    The write is held until the parse is done: a parse that waited for the write would leave it held
    (and the write end first); a parse on the caller's thread before the write is told by its thread."""
    ingest, spool, index = _ingest(tmp_path)
    instance = synthetic_mr()
    parsed, order, listings, parsers = threading.Event(), [], [], []
    real_write, real_parse = os.write, ingest_module.parse_instance

    def held_write(fd: int, data: Any) -> int:
        if len(data) != len(instance):  # not the instance's write (os is patched for every caller)
            return real_write(fd, data)
        parsed.wait(10)
        written = real_write(fd, data)
        order.append("write ends")
        listings.append(_spooled(spool))
        return written

    def parse(*args: Any) -> InstanceHeader:
        header = real_parse(*args)
        parsers.append(threading.get_ident())
        order.append("parsed")
        listings.append(_spooled(spool))
        parsed.set()
        return header

    monkeypatch.setattr("node.store.spool.os.write", held_write)
    monkeypatch.setattr(ingest_module, "parse_instance", parse)
    stored = ingest.store(instance)
    monkeypatch.undo()
    assert order == ["parsed", "write ends"]
    assert parsers != [threading.get_ident()]
    assert listings == [[], []]  # nothing placed before both were done
    assert index.instance_paths() == {
        stored.header.sop_instance_uid: _spooled(spool)[0].relative_to(spool.root).as_posix()
    }
    index.close()


def test_instance_over_the_size_limit_is_refused_without_writing(tmp_path: Path) -> None:
    """An instance larger than the configured maximum gets Out of Resources and nothing is written."""
    data = synthetic_mr()
    ingest, spool, index = _ingest(tmp_path, max_instance_bytes=len(data) - 1)
    with pytest.raises(OutOfResources) as refused:
        ingest.store(data)
    assert dimse_status(refused.value) == Status.OUT_OF_RESOURCES
    assert _spooled(spool) == []
    index.close()


def test_study_over_its_instance_limit_refuses_new_instances_but_acknowledges_resends(
    tmp_path: Path,
) -> None:
    """Past the per-study limit a new instance is refused; an instance already held is still a duplicate."""
    ingest, spool, index = _ingest(tmp_path, max_instances_per_study=2)
    study = generate_uid()
    first, second, third = (_instance_of(study) for _ in range(3))
    ingest.store(first)
    ingest.store(second)
    with pytest.raises(OutOfResources, match="maximum number of instances"):
        ingest.store(third)
    assert ingest.store(first).duplicate
    assert len(_spooled(spool)) == 2
    ingest.store(_instance_of(generate_uid()))  # another study is not affected
    index.close()


def test_full_backlog_refuses_new_studies_and_keeps_taking_waiting_ones(tmp_path: Path) -> None:
    """With the backlog at its bound a new study is refused; studies already waiting still receive."""
    ingest, spool, index = _ingest(tmp_path, max_waiting_studies=1)
    waiting = generate_uid()
    ingest.store(_instance_of(waiting))
    with pytest.raises(OutOfResources, match="backlog"):
        ingest.store(_instance_of(generate_uid()))
    ingest.store(_instance_of(waiting))
    assert index.study_instance_count(waiting) == 2
    assert index.waiting_studies() == 1
    assert len(_spooled(spool)) == 2
    queue, now = JobQueue(index), datetime(2026, 1, 1, tzinfo=UTC)
    [job] = queue.enqueue_ready(now + timedelta(hours=1), stable_seconds=10, max_wait_seconds=600)
    assert index.waiting_studies() == 1  # queued for inference: still waiting
    claimed = queue.claim("worker", now)
    assert claimed is not None and claimed.id == job.id
    queue.complete(claimed, Outcome.NO_SHORT_AXIS_CINE, [], now)
    assert index.waiting_studies() == 0
    ingest.store(_instance_of(generate_uid()))  # the backlog drained: new studies are taken again
    index.close()
