"""Ingest: check, write durably, index; a resend is stored once; nothing is written when refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.clock import ManualClock
from node.errors import MalformedInstance, OutOfResources
from node.status import Status
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.spool import Spool
from tests.support import synthetic_mr


def _ingest(tmp_path: Path, min_free_bytes: int = 0) -> tuple[Ingest, Spool, Index]:
    spool = Spool(tmp_path / "spool")
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    return Ingest(spool, index, ManualClock(), min_free_bytes), spool, index


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
    assert index.series_counts() == {stored.header.series_instance_uid: 1}
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
    assert raised.value.status is Status.OUT_OF_RESOURCES
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
    assert index.instance_paths() == {}
    index.close()
