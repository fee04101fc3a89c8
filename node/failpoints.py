"""Failpoints: named places where the process can be made to SIGKILL itself, for crash tests.

``DICOMNODE_FAILPOINT=<name>`` in the environment arms one name; the first time the process reaches
``failpoint(name)`` it logs one line and kills itself with SIGKILL, exactly as an OOM kill or a power
cut would stop it there. Unset (always, in service) a failpoint is one string comparison. The
environment variable is read once at import: it is a switch for test processes, not a setting.

Places (stage: name):

- receiving: ``ingest:written`` (file durable, not indexed), ``ingest:indexed`` (indexed, not yet
  acknowledged)
- waiting for stability: ``jobs:ready`` (study quiet, its job not yet queued)
- inference: ``worker:measured`` (stacks measured, results not yet recorded)
- report building: ``publisher:partial`` (the first report object in the outbox, the rest not)
- delivery: ``sender:sent`` (the PACS acknowledged an object, the node has not recorded it)
"""

from __future__ import annotations

import os
import signal

from node.config import FAILPOINT_ENV
from node.logging import get_logger

log = get_logger(__name__)

ENV = FAILPOINT_ENV
_ARMED = os.environ.get(ENV, "")


def failpoint(name: str) -> None:
    """SIGKILL this process here when ``name`` is the armed failpoint."""
    if name == _ARMED:
        log.warning("failpoint reached: killing the process", failpoint=name)
        os.kill(os.getpid(), signal.SIGKILL)
