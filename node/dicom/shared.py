"""Association limits shared by several receiver processes (``DICOM__RECEIVER_PROCESSES``).

Each process holds one row of counters in shared memory: its associations in all, and per calling AE
title (hashed into :data:`SLOTS` slots, so two titles may share a slot: the limit then holds for
both together, never less strictly). A process reserves a slot when pynetdicom asks for the limit
while negotiating, and gives it back when the association ends (or is rejected). The rows of a
process that died are cleared by the supervisor before it starts the next one, so a killed
receiver never leaves associations counted that no longer exist.
"""

from __future__ import annotations

import zlib
from multiprocessing.context import SpawnContext
from typing import Any

#: Hash slots for calling AE titles.
SLOTS = 251


def _slot(ae_title: str) -> int:
    return zlib.crc32(ae_title.strip().encode("latin-1", "replace")) % SLOTS


class SharedAssociations:
    """Counters of established (and negotiating, admitted) associations of every receiver process."""

    def __init__(self, context: SpawnContext, processes: int) -> None:
        self.processes = processes
        self._lock = context.Lock()
        self._totals: Any = context.RawArray("i", processes)
        self._callers: Any = context.RawArray("i", processes * SLOTS)

    def reserve(self, process: int, ae_title: str, maximum: int, per_caller: int) -> bool:
        """Count one more association of ``ae_title`` for ``process`` unless a limit is reached."""
        slot = _slot(ae_title)
        with self._lock:
            total = sum(self._totals[index] for index in range(self.processes))
            caller = sum(self._callers[index * SLOTS + slot] for index in range(self.processes))
            if total >= maximum or caller >= per_caller:
                return False
            self._totals[process] += 1
            self._callers[process * SLOTS + slot] += 1
        return True

    def release(self, process: int, ae_title: str) -> None:
        """Give back one association of ``ae_title`` that ``process`` reserved."""
        slot = _slot(ae_title)
        with self._lock:
            self._totals[process] = max(0, self._totals[process] - 1)
            self._callers[process * SLOTS + slot] = max(0, self._callers[process * SLOTS + slot] - 1)

    def clear(self, process: int) -> int:
        """Forget every association of a process that ended; returns how many it held."""
        with self._lock:
            held = int(self._totals[process])
            self._totals[process] = 0
            for slot in range(SLOTS):
                self._callers[process * SLOTS + slot] = 0
        return held

    def held(self) -> int:
        """Associations counted in all processes."""
        with self._lock:
            return sum(self._totals[index] for index in range(self.processes))
