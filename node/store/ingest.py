"""Ingest: the durable half of C-STORE. Check while the bytes as received go to disk, then index.

The DICOM layer calls :meth:`Ingest.store` and answers Success only when it returns; every failure
is a :class:`~node.errors.NodeError` carrying the status to answer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import OperationalError

from node.clock import Clock, monotonic
from node.config import Settings
from node.dicom.instance import InstanceHeader, Stored, parse_instance
from node.errors import ConflictingInstance, NodeError, OutOfResources, StudyMismatch
from node.failpoints import failpoint
from node.store.index import Index
from node.store.spool import Spool, Staged


@dataclass(frozen=True)
class IngestLimits:
    """What the node refuses to take, each answered with Out of Resources (0xA700)."""

    #: Free disk that must remain after writing the instance.
    min_free_bytes: int
    #: Largest instance; the listener's receive meter stops bigger ones before they are whole.
    max_instance_bytes: int = 1 << 30
    #: Instances one study may hold; a further new instance of it is refused.
    max_instances_per_study: int = 50000
    #: Studies waiting for inference (receiving, ready or queued); a new study beyond it is refused
    #: until the backlog drains, so a flood cannot outgrow the disk and the queue.
    max_waiting_studies: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        """The limits configured in ``[storage]``, ``[dicom]`` and ``[pipeline]``."""
        return cls(
            min_free_bytes=settings.storage.min_free_mb * 1024 * 1024,
            max_instance_bytes=settings.dicom.max_instance_mb * 1024 * 1024,
            max_instances_per_study=settings.storage.max_instances_per_study,
            max_waiting_studies=settings.pipeline.max_queued_studies,
        )


class _KeyedLocks:
    """One lock per key while anyone holds or waits for it (per SOP Instance UID here)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class _Admission:
    """The study limits without a query per instance: counts kept in memory, checked near a limit.

    A study's count is read from the index the first time this process sees the study, then counted
    up here; the number of studies waiting for inference is read again at most every
    ``refresh_s``. Another process (a second node on the same index) may add to both meanwhile, so a
    count within :data:`_MARGIN` of its limit is read again from the index before an instance is
    admitted or refused: the limits hold exactly, and far from them no query is made.
    """

    _MARGIN = 64

    def __init__(self, index: Index, limits: IngestLimits, clock: Clock, refresh_s: float = 1.0) -> None:
        self._index = index
        self._limits = limits
        self._clock = clock
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._waiting: tuple[int, float] | None = None

    def admit(self, study_instance_uid: str) -> None:
        """Raise :class:`OutOfResources` when one more instance of the study is over a limit."""
        limits = self._limits
        with self._lock:
            count = self._counts.get(study_instance_uid)
        if count is None or count >= limits.max_instances_per_study - self._MARGIN:
            count = self._index.study_instance_count(study_instance_uid)
            with self._lock:
                if count is None:
                    self._counts.pop(study_instance_uid, None)
                else:
                    self._counts[study_instance_uid] = count
        if count is None and self._waiting_studies() >= limits.max_waiting_studies:
            raise OutOfResources("inference backlog full: new studies refused until it drains")
        if count is not None and count >= limits.max_instances_per_study:
            raise OutOfResources("study holds the configured maximum number of instances")

    def added(self, study_instance_uid: str) -> None:
        """Count an instance just indexed."""
        with self._lock:
            if study_instance_uid in self._counts:
                self._counts[study_instance_uid] += 1
            else:
                self._counts[study_instance_uid] = 1
                self._waiting = None  # a new study: the backlog is read again next time

    def _waiting_studies(self) -> int:
        now = monotonic()
        with self._lock:
            cached = self._waiting
        fresh = cached is not None and now - cached[1] < self._refresh_s
        if cached is not None and fresh and cached[0] < self._limits.max_waiting_studies - self._MARGIN:
            return cached[0]
        waiting = self._index.waiting_studies()
        with self._lock:
            self._waiting = (waiting, now)
        return waiting


class _FreeSpace:
    """The free-disk floor without a statvfs per instance: the free space is read again after every
    ``sample_bytes`` written (and whenever it was within that of the floor), and counted down between."""

    def __init__(self, spool: Spool, floor: int, sample_bytes: int = 64 * 1024 * 1024) -> None:
        self._spool = spool
        self._floor = floor
        self._sample_bytes = sample_bytes
        self._lock = threading.Lock()
        self._free: int | None = None
        self._since = 0

    def reserve(self, size: int) -> None:
        """Raise :class:`OutOfResources` when writing ``size`` bytes would go below the floor."""
        with self._lock:
            stale = (
                self._free is None
                or self._since + size >= self._sample_bytes
                or self._free - size - self._floor < self._sample_bytes
            )
            if stale:
                self._free, self._since = self._spool.free_bytes(), 0
            assert self._free is not None
            if self._free - size < self._floor:
                raise OutOfResources("free disk below the configured floor")
            self._free -= size
            self._since += size


def _unwritable(error: OSError) -> OutOfResources:
    """The refusal for a spool write that failed (read-only, full, failing disk): send again later."""
    return OutOfResources(f"spool not writable: {error.strerror or type(error).__name__}")


class Ingest:
    """Durable receipt of instances into the spool and the index.

    The write-and-index step is serialised per SOP Instance UID, so two associations sending the
    same UID at once cannot leave the index naming one sender's bytes while the file holds the
    other's: the first content wins. A later arrival is acknowledged as a duplicate only when it is
    byte-identical; other content under a held UID is refused (0x0111) and logged.
    """

    def __init__(self, spool: Spool, index: Index, clock: Clock, limits: IngestLimits) -> None:
        self._spool = spool
        self._index = index
        self._clock = clock
        self._limits = limits
        self._locks = _KeyedLocks()
        self._admission = _Admission(index, limits, clock)
        self._space = _FreeSpace(spool, limits.min_free_bytes)
        # Headers are parsed here while the storing thread waits on its durable write. A few
        # threads: a parse holds the GIL, so more would only queue for it.
        self._parser = ThreadPoolExecutor(max_workers=4, thread_name_prefix="header-parse")

    def close(self) -> None:
        """Stop the header-parsing threads (after the listener has stopped)."""
        self._parser.shutdown(wait=True)

    def store(
        self,
        data: bytes,
        calling_ae: str | None = None,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        expected_study: str | None = None,
    ) -> Stored:
        """Store one Part 10 byte string (preamble, meta, dataset as received).

        ``expected_study``: the Study Instance UID the instance must have (a STOW-RS request's URL).

        Raises
        ------
        MalformedInstance, SopClassMismatch
            The data is not a whole, identifiable dataset.
        StudyMismatch
            The instance is not of ``expected_study``; nothing is stored.
        ConflictingInstance
            The SOP Instance UID is held with other bytes.
        OutOfResources
            A limit of :class:`IngestLimits` is reached, the spool cannot be written or the index is
            unavailable; nothing is left behind.
        """
        limits = self._limits
        if len(data) > limits.max_instance_bytes:
            raise OutOfResources("instance larger than the configured maximum")
        # Checked before anything is written; a refusal waits until the instance would be placed, so
        # that what is wrong with the instance itself, or a resend of one held, is answered as such.
        # An instance refused later keeps its share counted down until the next sample, which is
        # exact near the floor.
        refusal: OutOfResources | None = None
        try:
            self._space.reserve(len(data))
        except OutOfResources as error:
            refusal = error
        with self._spool.staged() as staged:
            header, failed = self._parse_while_writing(
                None if refusal else staged, data, expected_sop_class, expected_sop_instance
            )
            if failed is not None:
                refusal = _unwritable(failed)
            if expected_study is not None and header.study_instance_uid != expected_study:
                raise StudyMismatch("instance of another study than the request names")
            return self._place(staged, header, data, calling_ae, refusal)

    def _parse_while_writing(
        self,
        staged: Staged | None,
        data: bytes,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
    ) -> tuple[InstanceHeader, OSError | None]:
        """The instance's header, parsed on a worker thread while this one writes the bytes durably
        to ``staged`` (None: nothing to write), and the error of that write, if any.

        The durable write is one system call that releases the GIL and the parse holds it, so the
        two overlap instead of adding up (each takes about a third of a millisecond per instance on
        a small machine). Nothing is placed or indexed before both are done.
        """
        if staged is None:
            return parse_instance(data, expected_sop_class, expected_sop_instance), None
        try:
            parsing = self._parser.submit(parse_instance, data, expected_sop_class, expected_sop_instance)
        except RuntimeError:  # closed: the node is stopping; this thread parses after the write
            parsing = None
        failed: OSError | None = None
        try:
            staged.write(data)
        except OSError as error:
            failed = error
        if parsing is None:
            return parse_instance(data, expected_sop_class, expected_sop_instance), failed
        return parsing.result(), failed

    def _place(
        self,
        staged: Staged,
        header: InstanceHeader,
        data: bytes,
        calling_ae: str | None,
        refusal: OutOfResources | None,
    ) -> Stored:
        """Link the written instance into the spool and index it, unless it is held already;
        ``refusal`` (the disk) is raised where a new instance would be placed."""
        relative = self._spool.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self._locks.hold(header.sop_instance_uid):
            if (self._spool.root / relative).exists():
                # Held already (a resend), or written before a failed index call: the index decides.
                held = self._index.instance_path(header.sop_instance_uid)
                if held is not None:
                    self._check_same(Path(held), data)
                    return Stored(header=header, duplicate=True)
            self._admission.admit(header.study_instance_uid)
            if refusal is not None:
                raise refusal
            try:
                # Never over a file that is there: another receiver process may be storing it now.
                self._spool.place(staged, relative)
            except FileExistsError:
                return self._written_elsewhere(header, relative, data, calling_ae)
            except OSError as error:
                raise _unwritable(error) from None
            failpoint("ingest:written")
            try:
                added = self._index.add_instance(
                    header, relative.as_posix(), len(data), calling_ae, self._clock.now()
                )
            except BaseException as error:
                if self._indexed_anyway(header.sop_instance_uid, relative):
                    added = True  # the commit went through although the call failed
                elif isinstance(error, OperationalError):
                    raise OutOfResources("index unavailable: try again later") from None
                else:
                    raise
            if not added:
                held = self._index.instance_path(header.sop_instance_uid)
                if held == relative.as_posix():
                    # Another receiver process found this file and indexed it first: the same bytes.
                    return Stored(header=header, duplicate=True)
                # The UID is indexed under another path (another study or series): the first is kept.
                self._spool.remove(relative)
                if held is not None:
                    self._check_same(Path(held), data)
                return Stored(header=header, duplicate=True)
            self._admission.added(header.study_instance_uid)
            failpoint("ingest:indexed")
        return Stored(header=header, duplicate=False)

    def reconcile(self, quarantine: Path) -> tuple[int, int]:
        """Index every spool file the index lacks (start-up, before the listener opens).

        A file whose instance is not indexed (the node died between write and index) is indexed as
        received now, so its study waits a quiet period. A file that cannot be parsed, or whose SOP
        Instance UID is indexed under another path, is moved to ``quarantine`` with its spool path,
        so no file stays in the spool without its index row. Returns (indexed, quarantined).
        """
        known = set(self._index.instance_paths().values())
        indexed = quarantined = 0
        for relative in self._spool.files():
            if relative.as_posix() in known:
                continue
            data = (self._spool.root / relative).read_bytes()
            try:
                header = parse_instance(data)
            except NodeError:
                header = None
            expected = (
                self._spool.relative_path(
                    header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
                )
                if header is not None
                else None
            )
            if (
                header is not None
                and relative == expected
                and self._index.add_instance(header, relative.as_posix(), len(data), None, self._clock.now())
            ):
                indexed += 1
                continue
            target = quarantine / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._spool.root / relative, target)
            quarantined += 1
        return indexed, quarantined

    def _written_elsewhere(
        self, header: InstanceHeader, relative: Path, data: bytes, calling_ae: str | None
    ) -> Stored:
        """The instance's file appeared since it was looked for: another receiver process stored it
        (or a file of an attempt whose index call failed is there). The same bytes are the same
        instance, indexed here if that process has not yet; other bytes are refused (0x0111)."""
        self._check_same(relative, data)
        try:
            added = self._index.add_instance(
                header, relative.as_posix(), len(data), calling_ae, self._clock.now()
            )
        except OperationalError:
            raise OutOfResources("index unavailable: try again later") from None
        if added:
            self._admission.added(header.study_instance_uid)
        return Stored(header=header, duplicate=not added)

    def _indexed_anyway(self, sop_instance_uid: str, relative: Path) -> bool:
        """After a failed index call: whether the row is there all the same (a commit that went through
        although its call failed). If it is not, the file just written goes again (no file without its
        row); if the index cannot even be asked, the file stays for the start-up reconciliation."""
        try:
            held = self._index.instance_path(sop_instance_uid)
        except Exception:  # noqa: BLE001 - the index is still unreachable: keep the file, decide at start-up
            return False
        if held == relative.as_posix():
            return True
        self._spool.remove(relative)
        return False

    def _check_same(self, held: Path, data: bytes) -> None:
        """Raise :class:`ConflictingInstance` unless the held file has exactly these bytes.

        A held file that is missing (lost outside the node) is written again from these bytes: its
        index row names this instance, and the sender is resending it.
        """
        target = self._spool.root / held
        if not target.exists():
            self._spool.write(held, data)
            return
        try:
            same = target.read_bytes() == data
        except OSError:
            same = False
        if not same:
            raise ConflictingInstance("SOP Instance UID already held with other content; the first is kept")
