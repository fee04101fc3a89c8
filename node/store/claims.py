"""Who holds a claim on a queued row, and whether their process still runs.

A claim is also a lease: it holds until ``lease_until``, which the claiming process renews while it
runs (:func:`renew`). A claim whose lease ran out is released by any node (:func:`release_expired`), on
any host, so a host that dies for good, or a container rescheduled under a new host name, leaves
nothing stuck. The checks below release a dead process's claims on its own host at once.

A claimant id is ``host:pid:start:thread``. ``start`` tells one run of a process from another that
got the same pid later: after a reboot, and in a container, where the node is often pid 1 every time,
a restarted node has the pid of the one that died holding claims. On Linux it is the boot id and the
process's start time (``/proc``), so it can be checked for any process on the host; elsewhere it is a
random token, which tells only this process's own earlier runs from itself.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, Table, select, update

_PROC = Path("/proc")
#: Prefix of a start mark read from /proc, which any process on the host can check.
_PROC_MARK = "proc-"
#: Index of field 22 of /proc/<pid>/stat (start time, clock ticks after boot) in the fields that
#: follow the command name, field 2, which is in parentheses and may hold spaces.
_START_TIME_FIELD = 19


def _start_mark(pid: int) -> str | None:
    """``proc-<boot id>-<start time>`` of process ``pid``; None where /proc cannot tell."""
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text(encoding="ascii").strip()
        stat = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
        start = stat.rpartition(")")[2].split()[_START_TIME_FIELD]
    except (OSError, IndexError):
        return None
    return f"{_PROC_MARK}{boot}-{start}"


_OWN_MARK = _start_mark(os.getpid()) or f"run-{uuid.uuid4().hex}"


def claimant_id(thread_name: str) -> str:
    """An id unique to this host, process (run) and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{_OWN_MARK}:{thread_name}"


def process_claimant_prefix() -> str:
    """The start of every claimant id of this process (``host:pid:start:``)."""
    return claimant_id("")


def claimant_is_dead(claimant: str) -> bool:
    """Whether a claimant id names a process on this host that no longer runs.

    Claims made on other hosts are never judged here (their own host requeues them on restart). An id
    in the older ``host:pid:thread`` form, without a start mark, is judged by its pid alone.
    """
    host, _, rest = claimant.partition(":")
    pid_text, _, rest = rest.partition(":")
    mark = rest.partition(":")[0] if rest.count(":") >= 1 else None
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # The process with this pid is this one, so a claim that is not this run's is a dead run's.
        return mark != _OWN_MARK
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user has the pid
    if mark is None or not mark.startswith(_PROC_MARK):
        return False
    return _start_mark(pid) not in (None, mark)


def release_abandoned(
    engine: Engine,
    table: Table,
    *,
    claimed: str,
    released: str,
    is_abandoned: Callable[[str], bool],
) -> int:
    """Return rows in state ``claimed`` whose claimant ``is_abandoned`` to state ``released``.

    ``table`` must have ``id``, ``state`` and ``claimed_by`` columns (jobs, deliveries).
    """
    with engine.begin() as connection:
        rows = connection.execute(
            select(table.c.id, table.c.claimed_by).where(table.c.state == claimed)
        ).all()
        abandoned = [row_id for row_id, claimant in rows if is_abandoned(str(claimant or ""))]
        if abandoned:
            connection.execute(
                update(table)
                .where(table.c.id.in_(abandoned), table.c.state == claimed)
                .values(state=released, claimed_by=None, lease_until=None)
            )
    return len(abandoned)


def renew(engine: Engine, table: Table, *, claimed: str, claimant_prefix: str, until: datetime) -> int:
    """Extend to ``until`` the lease of every row in state ``claimed`` held by a claimant id that
    starts with ``claimant_prefix`` (this process's); returns how many."""
    with engine.begin() as connection:
        result = connection.execute(
            update(table)
            .where(table.c.state == claimed, table.c.claimed_by.startswith(claimant_prefix, autoescape=True))
            .values(lease_until=until)
        )
    return int(result.rowcount)


def release_expired(engine: Engine, table: Table, *, claimed: str, released: str, now: datetime) -> int:
    """Return rows in state ``claimed`` whose lease ran out before ``now`` to state ``released``."""
    with engine.begin() as connection:
        result = connection.execute(
            update(table)
            .where(table.c.state == claimed, table.c.lease_until < now)
            .values(state=released, claimed_by=None, lease_until=None)
        )
    return int(result.rowcount)
