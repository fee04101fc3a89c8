"""The spool: received instances as files, written durably before they are acknowledged.

Layout ``spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. A UID that is not made
of digits and dots (PS3.5 9.1; leading zeros are tolerated, the Sunnybrook files have them) is
replaced by a hash, so a path stays inside the spool whatever a sender puts in a UID.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SAFE_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def safe_component(uid: str) -> str:
    """A path component for a UID: the UID itself when safe, else ``h-<sha256 prefix>``."""
    if _SAFE_UID.match(uid) and ".." not in uid:
        return uid
    return "h-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@contextmanager
def _opened_folder(path: Path) -> Iterator[int]:
    """A folder's descriptor, to fsync it or link into it; closed when the block ends."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with _opened_folder(path) as fd:
        os.fsync(fd)


class Staged:
    """A temporary file of the spool that bytes are written to durably, then linked to their name.

    Unnamed (``O_TMPFILE``) where the file system allows: nothing to remove afterwards, and nothing
    left behind by a crash; else ``.incoming/<random>.part``. The file is opened ``O_SYNC``, so
    :meth:`write` returns only once the bytes are on disk, in one system call that releases the GIL
    throughout. An error opening the file is kept for :meth:`write` to raise, so the caller decides
    what comes first (the ingest refuses a malformed instance as such, whatever the disk).
    """

    def __init__(self, folder: Path, unnamed: bool) -> None:
        #: The temporary file's name; None while it has none (``O_TMPFILE``).
        self.path: Path | None = None
        #: True once the bytes are on disk: :meth:`Spool.place` takes nothing less.
        self.written = False
        self._fd: int | None = None
        self._error: OSError | None = None
        try:
            if unnamed:
                self._fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_SYNC, 0o640)
            else:
                path = folder / f"{uuid.uuid4().hex}.part"
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_SYNC, 0o640)
                self.path = path
        except OSError as error:
            self._error = error

    def write(self, data: bytes) -> None:
        """Write ``data``; on return it is on disk. OSError when the file could not be made or written."""
        if self._error is not None:
            raise self._error
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.written = True

    def link(self, folder: int, name: str) -> None:
        """Give the written file ``name`` in the folder open as ``folder`` (atomic; FileExistsError
        where the name is taken)."""
        if not self.written:
            raise ValueError("a staged file is placed only once its bytes are on disk")
        if self.path is not None:
            os.link(self.path, name, dst_dir_fd=folder)
        else:  # open(2): an O_TMPFILE file is named by linking its /proc/self/fd entry, followed
            os.link(f"/proc/self/fd/{self._fd}", name, dst_dir_fd=folder, follow_symlinks=True)

    def discard(self) -> None:
        """Close the file and remove its temporary name, if it has one (a linked file keeps its other)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self.path is not None:
            path, self.path = self.path, None
            path.unlink(missing_ok=True)


def _supports_unnamed(folder: Path) -> bool:
    """Whether unnamed (``O_TMPFILE``) files can be made in ``folder`` and linked to a name: on Linux,
    on most local file systems (not on some network or older overlay ones); tried as it is used."""
    if not hasattr(os, "O_TMPFILE"):
        return False
    name = f"probe-{uuid.uuid4().hex}.part"
    staged = Staged(folder, unnamed=True)
    try:
        staged.write(b"")
        with _opened_folder(folder) as descriptor:
            staged.link(descriptor, name)
    except OSError:
        return False
    finally:
        staged.discard()
    (folder / name).unlink()
    return True


class Spool:
    """Durable, atomic file writes under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / ".incoming"
        self._durable_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._ensure_dir(self._tmp)
        self._unnamed = _supports_unnamed(self._tmp)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance lives, relative to the spool root."""
        return Path(safe_component(study_uid), safe_component(series_uid), safe_component(sop_uid) + ".dcm")

    def free_bytes(self) -> int:
        """Free space on the spool's filesystem."""
        return shutil.disk_usage(self.root).free

    def write(self, relative: Path, data: bytes) -> Path:
        """Write ``data`` to ``relative`` atomically and durably; return the absolute path.

        The bytes go to a temporary file that is written durably, renamed over the target and the
        directory is fsync'd, so after return the file survives a crash or power loss with either
        the old or the new content, never a torn one.
        """
        target = self.root / relative
        self._ensure_dir(target.parent)
        with self.staged(named=True) as staged:
            staged.write(data)
            assert staged.path is not None
            os.replace(staged.path, target)
        _fsync_dir(target.parent)
        return target

    @contextmanager
    def staged(self, named: bool = False) -> Iterator[Staged]:
        """A temporary file to write to (:meth:`Staged.write`), then to :meth:`place`; closed and its
        temporary name removed when the block ends, whatever happened. ``named``: a named one even
        where unnamed ones can be made (to be renamed)."""
        staged = Staged(self._tmp, unnamed=self._unnamed and not named)
        try:
            yield staged
        finally:
            staged.discard()

    def place(self, staged: Staged, relative: Path) -> Path:
        """Give a written staged file its name ``relative`` and fsync the folder; return the absolute path.

        Atomic, and never replaces a file that is there (another process may have just written it):
        FileExistsError then, and nothing changes.
        """
        target = self.root / relative
        self._ensure_dir(target.parent)
        with _opened_folder(target.parent) as folder:
            staged.link(folder, target.name)
            os.fsync(folder)
        return target

    def _ensure_dir(self, directory: Path) -> None:
        """Create a directory chain and make each new entry durable in its parent."""
        if directory in self._durable_dirs:
            return
        with self._lock:
            missing: list[Path] = []
            current = directory
            while not current.exists():
                missing.append(current)
                current = current.parent
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
                _fsync_dir(path.parent)
            self._durable_dirs.add(directory)

    def check_writable(self) -> None:
        """Write, fsync and remove a probe file; OSError when the spool cannot be written."""
        probe = self._tmp / f"probe-{uuid.uuid4().hex}.part"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def remove(self, relative: Path) -> None:
        """Remove a file durably (its directory is fsync'd); a missing file is no error."""
        target = self.root / relative
        target.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def files(self) -> Iterator[Path]:
        """Every stored file, relative to the root (temporary files left out)."""
        for path in self.root.rglob("*.dcm"):
            relative = path.relative_to(self.root)
            if relative.parts[0] != self._tmp.name:
                yield relative

    def clear_incoming(self) -> int:
        """Remove temporary files a crash left behind; they were never acknowledged."""
        removed = 0
        for leftover in self._tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
