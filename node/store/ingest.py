"""Ingest: the durable half of C-STORE. Check, write the bytes as received, fsync, index.

The DICOM layer calls :meth:`Ingest.store` and answers Success only when it returns; every failure
is a :class:`~node.errors.NodeError` carrying the status to answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.clock import Clock
from node.config import Settings
from node.errors import OutOfResources
from node.failpoints import failpoint
from node.store.index import Index
from node.store.instance import InstanceHeader, parse_instance
from node.store.spool import Spool


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


@dataclass(frozen=True)
class Stored:
    """Outcome of a successful store."""

    header: InstanceHeader
    duplicate: bool


class Ingest:
    """Durable receipt of instances into the spool and the index."""

    def __init__(self, spool: Spool, index: Index, clock: Clock, limits: IngestLimits) -> None:
        self._spool = spool
        self._index = index
        self._clock = clock
        self._limits = limits

    def store(
        self,
        data: bytes,
        calling_ae: str | None = None,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
    ) -> Stored:
        """Store one Part 10 byte string (preamble, meta, dataset as received).

        Raises
        ------
        MalformedInstance, SopClassMismatch
            The data is not a whole, identifiable dataset.
        OutOfResources
            A limit of :class:`IngestLimits` is reached; nothing was written.
        """
        limits = self._limits
        if len(data) > limits.max_instance_bytes:
            raise OutOfResources("instance larger than the configured maximum")
        header = parse_instance(data, expected_sop_class, expected_sop_instance)
        if self._index.has_instance(header.sop_instance_uid):
            return Stored(header=header, duplicate=True)
        held = self._index.study_instance_count(header.study_instance_uid)
        if held is None and self._index.waiting_studies() >= limits.max_waiting_studies:
            raise OutOfResources("inference backlog full: new studies refused until it drains")
        if held is not None and held >= limits.max_instances_per_study:
            raise OutOfResources("study holds the configured maximum number of instances")
        if self._spool.free_bytes() - len(data) < limits.min_free_bytes:
            raise OutOfResources("free disk below the configured floor")
        relative = self._spool.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        self._spool.write(relative, data)
        failpoint("ingest:written")
        added = self._index.add_instance(
            header, relative.as_posix(), len(data), calling_ae, self._clock.now()
        )
        failpoint("ingest:indexed")
        return Stored(header=header, duplicate=not added)
