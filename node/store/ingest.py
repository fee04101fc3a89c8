"""Ingest: the durable half of C-STORE. Check, write the bytes as received, fsync, index.

The DICOM layer calls :meth:`Ingest.store` and answers Success only when it returns; every failure
is a :class:`~node.errors.NodeError` carrying the status to answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.clock import Clock
from node.errors import OutOfResources
from node.store.index import Index
from node.store.instance import InstanceHeader, parse_instance
from node.store.spool import Spool


@dataclass(frozen=True)
class Stored:
    """Outcome of a successful store."""

    header: InstanceHeader
    duplicate: bool


class Ingest:
    """Durable receipt of instances into the spool and the index."""

    def __init__(self, spool: Spool, index: Index, clock: Clock, min_free_bytes: int) -> None:
        self._spool = spool
        self._index = index
        self._clock = clock
        self._min_free_bytes = min_free_bytes

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
            Free disk is under the configured floor; nothing was written.
        """
        header = parse_instance(data, expected_sop_class, expected_sop_instance)
        if self._index.has_instance(header.sop_instance_uid):
            return Stored(header=header, duplicate=True)
        if self._spool.free_bytes() - len(data) < self._min_free_bytes:
            raise OutOfResources("free disk below the configured floor")
        relative = self._spool.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        self._spool.write(relative, data)
        added = self._index.add_instance(
            header, relative.as_posix(), len(data), calling_ae, self._clock.now()
        )
        return Stored(header=header, duplicate=not added)
