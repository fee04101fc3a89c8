"""Who holds a claim on a queued row: ``host:pid:thread`` ids, and whether their process still runs."""

from __future__ import annotations

import os
import socket


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
