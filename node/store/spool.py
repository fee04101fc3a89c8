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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Staged:
    """Bytes written to a temporary file of the spool: durable after :meth:`sync`, in place after
    :meth:`Spool.place`. The write happens here; an error of it is kept for :meth:`sync` to raise."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self._fd: int | None = None
        self._error: OSError | None = None
        self._created = False
        #: True once the bytes are on disk: :meth:`Spool.place` takes nothing less.
        self.synced = False
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            self._created = True
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            self._error = error
            self._close()

    def sync(self) -> None:
        """fsync the file (the GIL is released meanwhile); OSError when it could not be written."""
        if self._error is not None:
            raise self._error
        assert self._fd is not None
        os.fsync(self._fd)
        self._close()
        self.synced = True

    def discard(self) -> None:
        """Close and remove the temporary file (a placed file keeps its other name)."""
        self._close()
        if self._created:  # else nothing to remove, and unlink would fail on a read-only spool
            self._created = False
            self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class Spool:
    """Durable, atomic file writes under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / ".incoming"
        self._durable_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._ensure_dir(self._tmp)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance lives, relative to the spool root."""
        return Path(safe_component(study_uid), safe_component(series_uid), safe_component(sop_uid) + ".dcm")

    def free_bytes(self) -> int:
        """Free space on the spool's filesystem."""
        return shutil.disk_usage(self.root).free

    def write(self, relative: Path, data: bytes, exclusive: bool = False) -> Path:
        """Write ``data`` to ``relative`` atomically and durably; return the absolute path.

        The bytes go to a temporary file that is fsync'd, linked or renamed to the target and the
        directory is fsync'd, so after return the file survives a crash or power loss with either
        the old or the new content, never a torn one. ``exclusive``: never replace a file that is
        there (another process may have just written it); FileExistsError then, and nothing is
        written.
        """
        with self.staged(data) as staged:
            staged.sync()
            return self.place(staged, relative, exclusive)

    @contextmanager
    def staged(self, data: bytes) -> Iterator[Staged]:
        """Write ``data`` to a temporary file, not yet fsync'd: :meth:`Staged.sync`, then :meth:`place`.

        The temporary file is removed when the block ends, whatever happened; a placed file stays
        under its target name. A failed write is raised by :meth:`Staged.sync`, so the caller
        decides what comes first (the ingest refuses a malformed instance as such, whatever the disk).
        """
        staged = Staged(self._tmp / f"{uuid.uuid4().hex}.part", data)
        try:
            yield staged
        finally:
            staged.discard()

    def place(self, staged: Staged, relative: Path, exclusive: bool = False) -> Path:
        """Put a synced staged file at ``relative`` and fsync its directory; return the absolute path.

        ``exclusive``: link, failing with FileExistsError where a file is there; else rename over it.
        """
        if not staged.synced:
            raise ValueError("a staged file is placed only once it is fsync'd")
        target = self.root / relative
        self._ensure_dir(target.parent)
        if exclusive:
            os.link(staged.path, target)  # atomic, and fails where the target exists
        else:
            os.replace(staged.path, target)
        _fsync_dir(target.parent)
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
