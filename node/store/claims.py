"""Who holds a claim on a queued row: ``host:pid:thread`` ids, and whether their process still runs."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from sqlalchemy import Engine, Table, select, update


def claimant_id(thread_name: str) -> str:
    """An id unique to this host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{thread_name}"


def claimant_is_dead(claimant: str) -> bool:
    """Whether a claimant id names a process on this host that no longer runs.

    Claims made on other hosts are never judged here (their own host requeues them on restart).
    """
    host, _, rest = claimant.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
                .values(state=released, claimed_by=None)
            )
    return len(abandoned)
