"""The spool: UIDs become safe path components; writes are atomic and leave nothing partial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.store.spool import Spool, safe_component

HOSTILE_UIDS = [
    "../../etc",
    "..",
    ".",
    "1.2/3",
    "1.2\\3",
    "/etc/passwd",
    "1.2.3\x00",
    "1..2",
    "",
    "1." * 200 + "1",
    "x" * 5000,
    "1.2.840 ",
    "é.1",
]


@pytest.mark.parametrize("uid", HOSTILE_UIDS, ids=lambda uid: repr(uid)[:24])
def test_hostile_uid_becomes_a_single_plain_component(uid: str) -> None:
    """A UID that is not digits and dots becomes one short component without separators or dots."""
    component = safe_component(uid)
    assert component.startswith("h-")
    assert "/" not in component and "\\" not in component and "\x00" not in component
    assert "." not in component
    assert 0 < len(component) <= 64


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.5.1.4.1.1.4",
        "2.16.124.113543.6006.99.08975550791105350405",  # leading zero in a component: kept as-is
        "1.2.3.0004",
        "1." + "2" * 62,  # 64 characters, the longest valid UID
    ],
)
def test_valid_uid_is_kept_verbatim(uid: str) -> None:
    """A UID of digits and dots up to 64 characters is its own path component, leading zeros kept."""
    assert safe_component(uid) == uid


def test_distinct_hostile_uids_get_distinct_components() -> None:
    """Two different unsafe UIDs never share a path (the hash covers the whole value)."""
    components = {safe_component(uid) for uid in HOSTILE_UIDS}
    assert len(components) == len(HOSTILE_UIDS)
    assert safe_component("1." * 200 + "1") != safe_component("1." * 200 + "2")


def test_relative_path_of_hostile_uids_stays_inside_the_spool(tmp_path: Path) -> None:
    """Whatever the UIDs, an instance's path resolves to three levels below the spool root."""
    spool = Spool(tmp_path / "spool")
    root = spool.root.resolve()
    for study, series, sop in [
        ("../../etc", "1.2/3", "../../../passwd"),
        ("/abs", "..", "."),
        ("1." * 100, "x" * 300, "y" * 300),
    ]:
        relative = spool.relative_path(study, series, sop)
        assert not relative.is_absolute()
        resolved = (spool.root / relative).resolve()
        assert resolved.parent.parent.parent == root
        assert all(len(part) <= 255 for part in relative.parts)


def test_write_is_atomic_and_leaves_no_part_file(tmp_path: Path) -> None:
    """A write puts exactly the bytes at the target and leaves no temporary ``.part`` file."""
    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    payload = os.urandom(300_000)
    target = spool.write(relative, payload)
    assert target == spool.root / relative
    assert target.read_bytes() == payload
    assert list(spool.root.rglob("*.part")) == []
    assert list((spool.root / ".incoming").iterdir()) == []


def test_rewrite_replaces_the_whole_file(tmp_path: Path) -> None:
    """Writing a shorter payload over an existing file replaces it entirely (no stale tail)."""
    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    spool.write(relative, b"a" * 1000)
    spool.write(relative, b"b" * 10)
    assert (spool.root / relative).read_bytes() == b"b" * 10


def test_failed_write_leaves_neither_target_nor_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the disk write fails, the error propagates and neither the target nor a .part remains."""
    spool = Spool(tmp_path / "spool")
    spool.write(spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.1"), b"sibling")  # series dir exists
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")

    def failing_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("node.store.spool.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        spool.write(relative, b"payload")
    monkeypatch.undo()
    assert not (spool.root / relative).exists()
    assert list(spool.root.rglob("*.part")) == []


def test_clear_incoming_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    """Temporary files a crash left in .incoming are removed and counted on the next start."""
    spool = Spool(tmp_path / "spool")
    for name in ("a.part", "b.part"):
        (spool.root / ".incoming" / name).write_bytes(b"torn")
    assert Spool(tmp_path / "spool").clear_incoming() == 2
    assert list((spool.root / ".incoming").iterdir()) == []


def test_a_staged_file_is_placed_only_once_fsyncd(tmp_path: Path) -> None:
    """``place`` refuses bytes that were not fsync'd; once synced they are placed and nothing else stays."""
    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    with spool.staged(b"payload") as staged:
        with pytest.raises(ValueError, match="fsync"):
            spool.place(staged, relative, exclusive=True)
        assert not (spool.root / relative).exists()
        staged.sync()
        spool.place(staged, relative, exclusive=True)
    assert (spool.root / relative).read_bytes() == b"payload"
    assert list((spool.root / ".incoming").iterdir()) == []


def test_a_failed_staged_write_is_raised_by_sync_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write's error waits for ``sync`` (the caller decides what to report first); no file remains."""
    spool = Spool(tmp_path / "spool")

    def full_disk(_fd: int, _data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("node.store.spool.os.write", full_disk)
    with spool.staged(b"payload") as staged, pytest.raises(OSError, match="No space left"):
        staged.sync()
    monkeypatch.undo()
    assert list((spool.root / ".incoming").iterdir()) == []
