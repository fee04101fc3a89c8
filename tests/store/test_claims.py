"""Whether the process behind a claim on a job or a delivery still runs (node.store.claims)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.store import claims
from node.store.claims import claimant_id, claimant_is_dead

HOST = socket.gethostname()
LINUX_PROC = Path("/proc/self/stat").exists()


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this user that is not this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_this_run_holds_its_own_claims() -> None:
    assert not claimant_is_dead(claimant_id("worker-1"))


def test_an_earlier_run_with_this_process_id_is_dead() -> None:
    """After a reboot, or in a container where the node is pid 1 every time, the restarted node has
    the pid of the run that died holding claims: those claims are released, not kept forever."""
    assert claimant_is_dead(f"{HOST}:{os.getpid()}:proc-00000000-0000-0000-0000-000000000000-1:worker-1")
    assert claimant_is_dead(f"{HOST}:{os.getpid()}:run-0123abcd:worker-1")
    assert claimant_is_dead(f"{HOST}:{os.getpid()}:worker-1"), "an id of the older form, this pid"


def test_a_process_that_exited_is_dead(other_process: subprocess.Popen[bytes]) -> None:
    pid = other_process.pid
    other_process.kill()
    other_process.wait()
    assert claimant_is_dead(f"{HOST}:{pid}:run-0123abcd:worker-1")
    assert claimant_is_dead(f"{HOST}:{pid}:worker-1")


@pytest.mark.skipif(not LINUX_PROC, reason="process start times are read from Linux /proc")
def test_a_live_process_is_alive_only_while_its_start_time_matches(
    other_process: subprocess.Popen[bytes],
) -> None:
    """A pid now used by another process than the one that claimed (reuse) is judged by start time."""
    pid = other_process.pid
    mark = claims._start_mark(pid)
    assert mark is not None
    assert not claimant_is_dead(f"{HOST}:{pid}:{mark}:worker-1")
    assert claimant_is_dead(f"{HOST}:{pid}:{mark}0:worker-1"), "same pid, another start: reused"
    assert not claimant_is_dead(f"{HOST}:{pid}:worker-1"), "an id of the older form is judged by pid"


def test_claims_of_other_hosts_are_left_to_them() -> None:
    assert not claimant_is_dead(f"another-{HOST}:{os.getpid()}:run-0123abcd:worker-1")
    assert not claimant_is_dead("")
