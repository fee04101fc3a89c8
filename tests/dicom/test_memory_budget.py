"""One memory budget for received instance data, shared by every association."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from node.dicom.scp import _MemoryBudget, _ReceiveMeter
from tests.support import (
    STORESCU,
    NodeServer,
    acknowledged_files,
    free_port,
    receiver_only_env,
    send_concurrently,
    write_large_mr,
)

MB = 1024 * 1024


def _meter(budget: _MemoryBudget) -> _ReceiveMeter:
    """A meter in the middle of a read, as the receive wrapper has it when it takes from the budget."""
    meter = _ReceiveMeter(max_pdu_bytes=1 << 30, max_message_bytes=1 << 40, budget=budget)
    meter.reading_since = 1.0
    return meter


def test_a_read_the_budget_cannot_cover_waits_until_the_oldest_message_is_stored() -> None:
    """The oldest message proceeds past the budget; a younger one waits until it is given back."""
    budget = _MemoryBudget(16 * MB, wait_s=30)
    oldest, younger = _meter(budget), _meter(budget)
    budget.take(oldest, 10 * MB)
    budget.take(oldest, 10 * MB)  # the oldest is never held back, even past the budget
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.take(younger, 4 * MB), done.set()))
    waiter.start()
    assert not done.wait(0.3), "a younger message read past the budget"
    budget.release(oldest)
    assert done.wait(5), "the younger message was not let through once the oldest was stored"
    waiter.join()
    assert budget.used == 4 * MB


def test_a_quiet_association_holding_bytes_does_not_hold_the_others_back() -> None:
    """Bytes of an association that went quiet still count, but only a message being read may pass
    the budget: the reading one proceeds instead of waiting for the quiet one."""
    budget = _MemoryBudget(16 * MB, wait_s=0.5)
    quiet, reading = _meter(budget), _meter(budget)
    budget.take(quiet, 10 * MB)
    quiet.reading_since = None  # its association then sends nothing more
    budget.take(reading, 10 * MB)
    assert budget.used == 20 * MB


def test_a_read_that_waits_too_long_ends_its_association() -> None:
    """Past the wait, the read fails as a lost connection would (the sender retries later)."""
    budget = _MemoryBudget(1 * MB, wait_s=0.2)
    budget.take(_meter(budget), 1 * MB)
    with pytest.raises(OSError, match="memory budget"):
        budget.take(_meter(budget), 1)


@pytest.mark.integration
def test_concurrent_instances_larger_than_the_budget_are_all_stored(tmp_path: Path) -> None:
    """Three 20 MB instances from three callers at once, with a 16 MB budget: each is stored in turn."""
    if not Path(STORESCU).exists():
        pytest.skip("DCMTK storescu is not installed (apt-get install dcmtk)")
    files = [write_large_mr(tmp_path / f"large-{n}.dcm", 20) for n in range(3)]
    server = NodeServer(
        data_dir=tmp_path / "data",
        log_path=tmp_path / "node.log",
        port=free_port(),
        extra_env={
            **receiver_only_env(),
            "DICOMNODE_WEB__ENABLED": "false",
            "DICOMNODE_DICOM__MAX_INFLIGHT_MB": "16",
            "DICOMNODE_DICOM__MAX_INSTANCE_MB": "64",
        },
    ).start()
    try:
        outputs = send_concurrently(server.port, [[path] for path in files])
    finally:
        server.stop()
    assert sorted(path for output in outputs for path in acknowledged_files(output)) == sorted(files)
    assert len(list(server.spool_dir.rglob("*.dcm"))) == 3
