"""Delivery under failure: store first, retry with backoff, exactly once, dead letter after the cap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from node.clock import ManualClock
from node.config import DeliverySettings, Destination
from node.delivery import sender as sender_module
from node.delivery.sender import DeliverySender
from node.dicom.status import Status
from node.store.audit import AuditAction, AuditLog
from node.store.index import Index
from node.store.outbox import DEAD, DELIVERED, PENDING, SENDING, Outbox, OutgoingObject
from node.store.spool import Spool
from tests.delivery.peer import RecordingSCP, outgoing_object
from tests.support import IndexOutage, free_port

pytestmark = pytest.mark.integration


def _object(study_uid: str) -> tuple[OutgoingObject, bytes]:
    return outgoing_object(study_uid)


class Harness:
    """Outbox and sender over one data directory; ``restart()`` rebuilds them as a new process would."""

    def __init__(self, data_dir: Path, destination: Destination, settings: DeliverySettings) -> None:
        self.data_dir = data_dir
        self.destination = destination
        self.settings = settings
        self.clock = ManualClock()
        self.restart()

    def restart(self) -> None:
        self.index = Index.open(f"sqlite:///{self.data_dir / 'index.sqlite3'}")
        self.outbox = Outbox(self.index, Spool(self.data_dir / "outbox"))
        self.sender = DeliverySender(
            outbox=self.outbox,
            settings=self.settings,
            calling_ae_title="DICOMNODE",
            clock=self.clock,
            claimant="test-host:1:sender",
        )

    def close(self) -> None:
        self.index.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    port = free_port()
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=port)
    settings = DeliverySettings(
        destinations=[destination], max_attempts=4, backoff_initial_s=5, backoff_max_s=60, timeout_s=5
    )
    built = Harness(tmp_path, destination, settings)
    yield built
    built.close()


def test_objects_wait_through_an_outage_and_a_restart_then_arrive_exactly_once(harness: Harness) -> None:
    """With the destination down, objects stay pending across a restart and then arrive once each."""
    objects = [_object("1.2.826.0.1.3680043.10.1") for _ in range(3)]
    for item, data in objects:
        assert harness.outbox.add(item, data, [harness.destination], harness.clock.now())
    again = harness.outbox.add(objects[0][0], objects[0][1], [harness.destination], harness.clock.now())
    assert again is False, "the same SOP Instance UID was scheduled twice"

    assert harness.sender.run_once() == 3  # destination down: every attempt fails
    states = harness.outbox.rows()
    assert {row.state for row in states} == {PENDING}
    assert {row.last_error for row in states} == {"destination unreachable"}
    assert harness.sender.run_once() == 0, "retried before its backoff elapsed"

    harness.close()
    harness.restart()
    peer = RecordingSCP(port=harness.destination.port).start()
    try:
        harness.clock.advance(5)
        assert harness.sender.run_once() == 3
        harness.clock.advance(3600)
        assert harness.sender.run_once() == 0
    finally:
        peer.stop()
    assert sorted(peer.received) == sorted(item.sop_instance_uid for item, _ in objects)
    assert {row.state for row in harness.outbox.rows()} == {DELIVERED}


def test_a_refusing_destination_ends_in_dead_letter_after_the_cap(harness: Harness) -> None:
    """A failure status counts as a failed attempt; after max_attempts the pair is dead with the error."""
    item, data = _object("1.2.826.0.1.3680043.10.2")
    harness.outbox.add(item, data, [harness.destination], harness.clock.now())
    peer = RecordingSCP(port=harness.destination.port, status=Status.OUT_OF_RESOURCES).start()
    try:
        waits = []
        for _ in range(harness.settings.max_attempts):
            assert harness.sender.run_once() == 1
            (row,) = harness.outbox.rows()
            if row.state == PENDING:
                waits.append((row.next_attempt_at - harness.clock.now()).total_seconds())
                harness.clock.advance(waits[-1])
        assert harness.sender.run_once() == 0
    finally:
        peer.stop()
    (row,) = harness.outbox.rows()
    assert row.state == DEAD
    assert row.attempts == harness.settings.max_attempts
    assert row.last_status == Status.OUT_OF_RESOURCES
    assert row.last_error == "failure status 0xA700"
    assert waits == [5.0, 10.0, 20.0], "backoff is exponential from backoff_initial_s"
    assert len(peer.received) == harness.settings.max_attempts


def test_a_delivery_the_index_could_not_record_is_sent_again_without_a_restart(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PACS stores an object, then the index goes away before the delivery is recorded. The pair
    must not stay "sending" until the node restarts: once the index is back, the next batch puts it
    back and sends it again (the PACS sees the SOP Instance UID twice, as after a crash there)."""
    item, data = _object("1.2.826.0.1.3680043.10.3")
    harness.outbox.add(item, data, [harness.destination], harness.clock.now())
    outage = IndexOutage(harness.index.engine)
    acknowledged = iter(["sender:sent"])

    def index_goes_away(name: str) -> None:
        if name == next(acknowledged, None):
            outage.down = True

    monkeypatch.setattr(sender_module, "failpoint", index_goes_away)
    peer = RecordingSCP(port=harness.destination.port).start()
    try:
        with pytest.raises(OperationalError):
            harness.sender.run_once()
        outage.down = False
        assert [row.state for row in harness.outbox.rows()] == [SENDING]
        assert harness.sender.run_once() == 1
        assert harness.sender.run_once() == 0
    finally:
        peer.stop()
    assert peer.received == [item.sop_instance_uid] * 2
    (row,) = harness.outbox.rows()
    assert (row.state, row.attempts) == (DELIVERED, 1)


def test_dead_letters_of_an_outage_are_sent_again_once_the_destination_answers_c_echo(
    harness: Harness,
) -> None:
    """After an outage longer than the backoff, the PACS's return brings its dead letters back; an
    object it refused, or answered with a failure status, stays dead (it would die again)."""
    study = "1.2.826.0.1.3680043.10.9"
    (lost, lost_data), (refused, refused_data), (failing, failing_data) = (_object(study) for _ in range(3))
    for item, data in ((lost, lost_data), (refused, refused_data), (failing, failing_data)):
        harness.outbox.add(item, data, [harness.destination], harness.clock.now())
    now = harness.clock.now()
    (_, second, third) = harness.outbox.claim_due("other:1:sender", now, 10, timedelta(minutes=2))
    harness.outbox.mark_refused(second, "destination does not accept Secondary Capture Image Storage", now)
    harness.outbox.mark_failed(third, "failure status 0xC000", 0xC000, now, 1, harness.settings.backoff)
    harness.outbox.release_abandoned(lambda claimant: claimant == "other:1:sender")
    for _ in range(harness.settings.max_attempts):
        assert harness.sender.run_once() == 1
        harness.clock.advance(harness.settings.backoff_max_s)
    assert {row.state for row in harness.outbox.rows()} == {DEAD}

    assert harness.sender.probe_dead_letters() == 0, "dead letters came back while the PACS was down"
    peer = RecordingSCP(port=harness.destination.port).start()
    try:
        harness.clock.advance(5)
        assert harness.sender.probe_dead_letters() == 0, "probed again before the probe interval"
        harness.clock.advance(harness.settings.dead_letter_probe_s)
        assert harness.sender.probe_dead_letters() == 1
        assert harness.sender.run_once() == 1
    finally:
        peer.stop()
    assert peer.received == [lost.sop_instance_uid]
    states = {row.sop_instance_uid: row.state for row in harness.outbox.rows()}
    assert states == {
        lost.sop_instance_uid: DELIVERED,
        refused.sop_instance_uid: DEAD,
        failing.sop_instance_uid: DEAD,
    }
    (entry,) = AuditLog(harness.index).entries(action=AuditAction.DELIVERY_RETRY)
    assert entry.actor == "node" and entry.target == harness.destination.key
