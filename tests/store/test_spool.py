"""The spool: UIDs become safe path components; writes are atomic and leave nothing partial."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    monkeypatch.setattr("node.store.spool.os.write", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        spool.write(relative, b"payload")
    monkeypatch.undo()
    assert not (spool.root / relative).exists()
    assert list(spool.root.rglob("*.part")) == []


def _full_disk(_fd: int, _data: object) -> int:
    raise OSError(28, "No space left on device")


def test_clear_incoming_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    """Temporary files a crash left in .incoming are removed and counted on the next start."""
    spool = Spool(tmp_path / "spool")
    for name in ("a.part", "b.part"):
        (spool.root / ".incoming" / name).write_bytes(b"torn")
    assert Spool(tmp_path / "spool").clear_incoming() == 2
    assert list((spool.root / ".incoming").iterdir()) == []


@pytest.fixture(params=["unnamed", "named"])
def staging_spool(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spool:
    """A spool staging into unnamed (O_TMPFILE) files, as on this machine, or named ones, as where the
    file system has no O_TMPFILE."""
    if request.param == "named":
        monkeypatch.setattr("node.store.spool._supports_unnamed", lambda _folder: False)
    return Spool(tmp_path / "spool")


def _unnamed_spool(root: Path) -> Spool:
    spool = Spool(root)
    if not spool._unnamed:
        pytest.skip("this file system makes no O_TMPFILE files (the spool stages into named ones)")
    return spool


def test_this_machine_stages_into_unnamed_files(tmp_path: Path) -> None:
    """Where the file system allows (Linux, a local file system), nothing staged ever has a name."""
    spool = _unnamed_spool(tmp_path / "spool")
    with spool.staged() as staged:
        assert staged.path is None
        assert list((spool.root / ".incoming").iterdir()) == []


def test_a_file_system_without_unnamed_files_stages_into_named_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where O_TMPFILE is refused (some network and overlay file systems), the spool finds out at start
    and stages into named files in .incoming, removed once placed."""
    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_TMPFILE on this platform: the fallback is all there is")
    real_open = os.open

    def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("node.store.spool.os.open", no_tmpfile)
    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    with spool.staged() as staged:
        assert staged.path is not None and staged.path.parent == spool.root / ".incoming"
        staged.write(b"payload")
        spool.place(staged, relative)
    monkeypatch.undo()
    assert (spool.root / relative).read_bytes() == b"payload"
    assert list((spool.root / ".incoming").iterdir()) == []


def test_a_staged_file_is_written_synchronously_and_placed_only_once_written(staging_spool: Spool) -> None:
    """The staged file is opened O_SYNC (each write returns once on disk); ``place`` refuses a file not
    yet written, and leaves nothing but the placed file."""
    spool = staging_spool
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    with spool.staged() as staged:
        assert staged._fd is not None and fcntl.fcntl(staged._fd, fcntl.F_GETFL) & os.O_SYNC == os.O_SYNC
        with pytest.raises(ValueError, match="on disk"):
            spool.place(staged, relative)
        assert not (spool.root / relative).exists()
        staged.write(b"payload")
        spool.place(staged, relative)
    assert (spool.root / relative).read_bytes() == b"payload"
    assert list((spool.root / ".incoming").iterdir()) == []


def test_place_never_replaces_a_file_that_is_there(staging_spool: Spool) -> None:
    """A second file for the same name raises FileExistsError; the first keeps its bytes."""
    spool = staging_spool
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    for payload in (b"first", b"second"):
        with spool.staged() as staged:
            staged.write(payload)
            if payload == b"first":
                spool.place(staged, relative)
            else:
                with pytest.raises(FileExistsError):
                    spool.place(staged, relative)
    assert (spool.root / relative).read_bytes() == b"first"
    assert list((spool.root / ".incoming").iterdir()) == []


def test_a_failed_staged_write_raises_and_leaves_nothing(
    staging_spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails raises its OSError; no temporary file remains."""
    spool = staging_spool
    monkeypatch.setattr("node.store.spool.os.write", _full_disk)
    with spool.staged() as staged, pytest.raises(OSError, match="No space left"):
        staged.write(b"payload")
    monkeypatch.undo()
    assert list((spool.root / ".incoming").iterdir()) == []


def test_a_process_killed_while_staging_leaves_no_unnamed_file_behind(tmp_path: Path) -> None:
    """An unnamed staged file vanishes with the process that wrote it (a named one waits for the next
    start's clear-up)."""
    _unnamed_spool(tmp_path / "spool")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from node.store.spool import Spool\n"
        "spool = Spool(Path(sys.argv[1]))\n"
        "with spool.staged() as staged:\n"
        "    staged.write(b'x' * 100000)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "spool")], check=False, timeout=60)
    assert killed.returncode == -9
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []
