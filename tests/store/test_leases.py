"""Claims are leases: a node whose lease ran out records nothing over the node that took the work over."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from node.clock import ManualClock
from node.config import Destination
from node.domain import DeliveryState, JobState, Outcome
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.jobs import ClaimLost, JobQueue, ResultRow
from node.store.outbox import Outbox
from node.store.spool import Spool
from tests.delivery.peer import outgoing_object
from tests.support import synthetic_mr

LEASE = timedelta(minutes=2)
PACS = Destination(ae_title="PACS", host="127.0.0.1", port=104)


def _row(note: str) -> ResultRow:
    return ResultRow(
        stack_index=0, outcome=Outcome.NO_SHORT_AXIS_CINE, series_instance_uids=(), details={"n": note}
    )


def test_a_job_taken_over_after_its_lease_ran_out_is_recorded_by_its_new_holder_only(tmp_path: Path) -> None:
    """Node A stalls past its lease; node B takes the job over and records it; A's late outcome and
    A's late failure raise ClaimLost and change nothing."""
    clock = ManualClock()
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    Ingest(Spool(tmp_path / "spool"), index, clock, IngestLimits(min_free_bytes=0)).store(synthetic_mr())
    queue = JobQueue(index)
    clock.advance(60)
    queue.enqueue_ready(clock.now(), 10.0, 600.0)
    stalled = queue.claim("node-a:1:x:worker-0", clock.now(), LEASE)
    assert stalled is not None
    clock.advance(LEASE.total_seconds() + 1)
    assert queue.requeue_expired(3, clock.now()) == (1, 0)
    taken = queue.claim("node-b:1:x:worker-0", clock.now(), LEASE)
    assert taken is not None and taken.id == stalled.id
    (result_id,) = queue.complete(taken, Outcome.NO_SHORT_AXIS_CINE, [_row("b")], clock.now())
    try:
        with pytest.raises(ClaimLost):
            queue.complete(stalled, Outcome.NO_SHORT_AXIS_CINE, [_row("a")], clock.now())
        with pytest.raises(ClaimLost):
            queue.fail(stalled, "late failure", 3, clock.now())
        (recorded,) = queue.results_for_study(stalled.study_instance_uid, include_superseded=True)
        assert recorded.id == result_id and recorded.details == {"n": "b"}
        assert queue.job_states() == {JobState.DONE: 1}
    finally:
        index.close()


def test_a_delivery_taken_over_after_its_lease_ran_out_keeps_its_new_holders_outcome(tmp_path: Path) -> None:
    """Sender A stalls past its lease; B takes the pair over and delivers it; A's late failure is ignored."""
    clock = ManualClock()
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    outbox = Outbox(index, Spool(tmp_path / "outbox"))
    item, data = outgoing_object("1.2.826.0.1.3680043.10.701")
    outbox.add(item, data, [PACS], clock.now())
    (stalled,) = outbox.claim_due("node-a:1:x:sender", clock.now(), 10, LEASE)
    clock.advance(LEASE.total_seconds() + 1)
    assert outbox.release_expired(clock.now()) == 1
    (taken,) = outbox.claim_due("node-b:1:x:sender", clock.now(), 10, LEASE)
    outbox.mark_delivered(taken, 0, clock.now())
    outbox.mark_failed(stalled, "destination unreachable", None, clock.now(), 1, lambda _: 5.0)
    try:
        (row,) = outbox.rows()
        assert (row.state, row.last_error) == (DeliveryState.DELIVERED, None)
    finally:
        index.close()
