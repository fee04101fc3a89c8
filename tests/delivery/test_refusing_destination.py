"""Delivery per object and destination: what one PACS refuses never holds up another."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from node.clock import ManualClock
from node.config import DeliverySettings, Destination, load_settings
from node.delivery.sender import DeliverySender
from node.domain import DeliveryState, OutboxKind, ReportObject
from node.errors import ConfigError
from node.store.index import Index
from node.store.outbox import Outbox, OutgoingObject
from node.store.spool import Spool
from tests.delivery.peer import RecordingSCP, outgoing_object, picky_storescp
from tests.support import clear_dicomnode_env, free_port

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.10.77"


class Node:
    """An outbox and a sender over one data directory, sending to ``destinations``."""

    def __init__(self, data_dir: Path, destinations: list[Destination]) -> None:
        self.destinations = destinations
        self.clock = ManualClock()
        self.index = Index.open(f"sqlite:///{data_dir / 'index.sqlite3'}")
        self.outbox = Outbox(self.index, Spool(data_dir / "outbox"))
        self.sender = DeliverySender(
            outbox=self.outbox,
            settings=DeliverySettings(destinations=destinations, max_attempts=5, timeout_s=5),
            calling_ae_title="DICOMNODE",
            clock=self.clock,
            claimant="test-host:1:sender",
        )

    def add(self, sop_class: str, kind: OutboxKind) -> OutgoingObject:
        item, data = outgoing_object(STUDY, sop_class, kind)
        assert self.outbox.add(item, data, self.destinations, self.clock.now())
        return item

    def state(self, item: OutgoingObject, destination: Destination) -> tuple[DeliveryState, str | None]:
        (row,) = [
            row
            for row in self.outbox.rows()
            if row.sop_instance_uid == item.sop_instance_uid and row.destination == destination.key
        ]
        return row.state, row.last_error


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.index.close()


def test_a_pacs_without_the_sr_class_gets_the_picture_and_the_other_pacs_gets_both(
    tmp_path: Path, node_factory: list[Node]
) -> None:
    """The SR is dead-lettered at once for the PACS that takes no SR; its SC and the other PACS go on."""
    picky = Destination(ae_title="PICKY", host="127.0.0.1", port=free_port())
    full = Destination(ae_title="FULL", host="127.0.0.1", port=free_port())
    node = Node(tmp_path, [picky, full])
    node_factory.append(node)
    sr = node.add(Comprehensive3DSRStorage, OutboxKind.DRAFT_SR)
    sc = node.add(SecondaryCaptureImageStorage, OutboxKind.SC)

    peer = RecordingSCP(port=full.port, ae_title="FULL").start()
    try:
        with picky_storescp(tmp_path, picky.port, "NoSR", ae_title="PICKY") as stored:
            started = time.monotonic()
            assert node.sender.run_once() == 4
            to_dead_letter_s = time.monotonic() - started
            picky_files = [pydicom.dcmread(path) for path in stored.iterdir()]
    finally:
        peer.stop()

    assert node.state(sr, picky) == (
        DeliveryState.DEAD,
        "destination does not accept Comprehensive 3D SR Storage",
    )
    assert node.state(sc, picky) == (DeliveryState.DELIVERED, None)
    assert [str(ds.SOPInstanceUID) for ds in picky_files] == [sc.sop_instance_uid]
    assert sorted(peer.received) == sorted([sr.sop_instance_uid, sc.sop_instance_uid])
    assert {row.state for row in node.outbox.rows() if row.destination == full.key} == {
        DeliveryState.DELIVERED
    }
    # nothing is left to retry: the refused SR is not sent again at the next poll
    node.clock.advance(3600)
    assert node.sender.run_once() == 0
    print(f"refused SR dead-lettered {to_dead_letter_s:.2f} s after the batch began")


def test_a_destination_that_accepts_no_offered_class_dead_letters_them_as_refused_not_unreachable(
    tmp_path: Path, node_factory: list[Node]
) -> None:
    """A PACS that accepts none of the proposed contexts is named for what it did, not 'unreachable'."""
    echo_only = Destination(ae_title="ECHOONLY", host="127.0.0.1", port=free_port())
    node = Node(tmp_path, [echo_only])
    node_factory.append(node)
    sc = node.add(SecondaryCaptureImageStorage, OutboxKind.SC)
    with picky_storescp(tmp_path, echo_only.port, "EchoOnly", ae_title="ECHOONLY"):
        assert node.sender.run_once() == 1
    assert node.state(sc, echo_only) == (
        DeliveryState.DEAD,
        "destination does not accept Secondary Capture Image Storage",
    )


def test_a_destination_that_takes_only_pictures_is_not_scheduled_for_reports(
    tmp_path: Path, node_factory: list[Node]
) -> None:
    """``send = ["sc"]`` schedules the SC and leaves out the SR and SEG for that destination."""
    pictures = Destination(ae_title="VIEWER", host="127.0.0.1", port=free_port(), send={ReportObject.SC})
    everything = Destination(ae_title="PACS", host="127.0.0.1", port=free_port())
    node = Node(tmp_path, [pictures, everything])
    node_factory.append(node)
    node.add(Comprehensive3DSRStorage, OutboxKind.DRAFT_SR)
    node.add(SecondaryCaptureImageStorage, OutboxKind.VERIFIED_SC)
    scheduled = {(row.kind, row.destination) for row in node.outbox.rows()}
    assert scheduled == {
        (OutboxKind.DRAFT_SR, everything.key),
        (OutboxKind.VERIFIED_SC, everything.key),
        (OutboxKind.VERIFIED_SC, pictures.key),
    }


def test_destinations_choose_what_they_receive_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``"send": ["sc", "seg"]`` in DICOMNODE_DELIVERY__DESTINATIONS is read; an unknown kind is refused."""
    clear_dicomnode_env(monkeypatch)
    monkeypatch.setenv(
        "DICOMNODE_DELIVERY__DESTINATIONS",
        '[{"ae_title": "PACS", "host": "pacs", "port": 104, "send": ["sc", "seg"]}]',
    )
    (destination,) = load_settings().delivery.destinations
    assert destination.send == {ReportObject.SC, ReportObject.SEG}
    monkeypatch.setenv(
        "DICOMNODE_DELIVERY__DESTINATIONS",
        '[{"ae_title": "PACS", "host": "pacs", "port": 104, "send": ["pdf"]}]',
    )
    expected = r"DICOMNODE_DELIVERY__DESTINATIONS\[0\]\.send\[0\]: Input should be 'sr', 'sc' or 'seg'"
    with pytest.raises(ConfigError, match=expected):
        load_settings()
