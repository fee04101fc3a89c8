"""The listener's association threads wait on their socket, and their reactors on their messages, instead
of polling them (in process, pynetdicom as the peer): data split over many PDUs arrives whole, an idle
association stays idle, and every other thread's sleeps are left as they are."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import cast

import pydicom
import pynetdicom.association
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification
from structlog.testing import capture_logs

from node.clock import SystemClock
from node.config import Settings
from node.dicom import scp
from node.dicom.part10 import part10
from node.dicom.scp import StorageSCP
from node.logging import Pseudonymiser
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.spool import Spool
from tests.support import free_port, synthetic_mr


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[StorageSCP, Spool]]:
    """The node's listener over a real ingest (spool and SQLite index), on a free loopback port."""
    settings = Settings(storage={"data_dir": str(tmp_path)}, dicom={"host": "127.0.0.1", "port": free_port()})
    index = Index.open(settings.storage.effective_database_url(), durable_commits=False)
    spool = Spool(tmp_path / "spool")
    ingest = Ingest(spool, index, SystemClock(), IngestLimits.from_settings(settings))
    listener = StorageSCP(settings.dicom, ingest, Pseudonymiser.from_key_file(tmp_path / "log-key"))
    listener.start()
    try:
        yield listener, spool
    finally:
        listener.stop(grace_s=5)
        index.close()


def test_an_instance_over_many_small_pdus_is_stored_byte_for_byte(listener: tuple[StorageSCP, Spool]) -> None:
    """A sender limited to 4 KiB PDUs splits an instance over many of them, each read whole by the
    listener (however the network cuts it); the spool holds exactly the dataset sent, behind its File
    Meta Information."""
    server, spool = listener
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    dataset.Rows = dataset.Columns = 128
    dataset.PixelData = bytes(range(256)) * 128  # 32 KiB: eight PDUs and more
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.maximum_pdu_size = 4096
    association = ae.associate("127.0.0.1", server.port, ae_title="DICOMNODE", max_pdu=4096)
    assert association.is_established
    try:
        assert association.send_c_store(dataset).Status == 0x0000
    finally:
        association.release()
    (stored,) = spool.files()
    body = encode(dataset, is_implicit_vr=False, is_little_endian=True)
    assert body is not None and len(body) > 8 * 4096
    expected = part10(MRImageStorage, dataset.SOPInstanceUID, ExplicitVRLittleEndian, body)
    assert (spool.root / stored).read_bytes() == expected


def test_an_idle_association_waits_instead_of_polling(
    listener: tuple[StorageSCP, Spool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's DUL thread asks its socket for data a thousand times a second; the listener's waits
    on the socket (and on its queue of answers to send), so an idle association looks a hundred times
    a second at most, and still answers."""
    server, _ = listener
    looks: list[float] = []
    ready = scp._PromptSocket.ready

    def counted(transport: scp._PromptSocket) -> bool:
        looks.append(time.monotonic())
        return bool(ready.fget(transport))  # type: ignore[attr-defined]

    monkeypatch.setattr(scp._PromptSocket, "ready", property(counted))
    idle = _idle_between_echoes(server, looks, echoes=1)
    assert 0 < idle <= 60, f"{idle} looks at the socket in 0.5 s"


def _verification_association(server: StorageSCP) -> Association:
    """An established Verification association from a pynetdicom sender to the listener."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", server.port, ae_title="DICOMNODE")
    assert association.is_established
    return association


def _idle_between_echoes(server: StorageSCP, seen: list[float], echoes: int) -> int:
    """Open an association, echo, and count what lands in ``seen`` over half a second of silence; then
    echo ``echoes`` times more and release. Every echo and the release must succeed."""
    association = _verification_association(server)
    try:
        assert association.send_c_echo().Status == 0x0000
        seen.clear()
        time.sleep(0.5)
        idle = len(seen)
        for _ in range(echoes):
            assert association.send_c_echo().Status == 0x0000
    finally:
        association.release()
    assert association.is_released
    return idle


def test_an_idle_association_reactor_waits_for_messages_instead_of_polling(
    listener: tuple[StorageSCP, Spool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's association reactor looks for a decoded message a thousand times a second; the
    listener's waits for one (or for a release, an abort, the end of the network thread), so an idle
    association's reactor turns a hundred times a second at most, and messages are still served at
    once, release included."""
    server, _ = listener
    turns: list[float] = []
    sleep = scp._ReactorTime.sleep

    def counted(seconds: float) -> None:
        if isinstance(threading.current_thread(), scp._PromptReactor):
            turns.append(time.monotonic())
        sleep(seconds)

    monkeypatch.setattr(scp._ReactorTime, "sleep", staticmethod(counted))
    idle = _idle_between_echoes(server, turns, echoes=20)
    assert 0 < idle <= 60, f"{idle} reactor turns in 0.5 s"


@pytest.fixture
def reactor_waits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[scp._PromptReactor, bool]]:
    """What each wait of a receiving association's reactor ended with: True when something woke it,
    False when it waited its whole time out; with the association it belongs to."""
    waits: list[tuple[scp._PromptReactor, bool]] = []
    prepare = scp._prompt

    def recording(association: Association) -> None:
        prepare(association)
        prepared = cast(scp._PromptReactor, association)
        wait = prepared.arrived.wait

        def recorded(timeout: float | None = None) -> bool:
            woken = wait(timeout)
            waits.append((prepared, woken))
            return woken

        prepared.arrived.wait = recorded  # type: ignore[method-assign]

    monkeypatch.setattr(scp, "_prompt", recording)
    return waits


def test_each_message_wakes_the_reactor(
    listener: tuple[StorageSCP, Spool], reactor_waits: list[tuple[scp._PromptReactor, bool]]
) -> None:
    """The reactor is woken by the message itself (its queue signals), not served when its wait runs
    out: of the waits that end while twenty echoes are answered one after another, most end woken."""
    server, _ = listener
    association = _verification_association(server)
    try:
        reactor_waits.clear()
        for _ in range(20):
            assert association.send_c_echo().Status == 0x0000
        woken = sum(1 for _, ended_woken in reactor_waits if ended_woken)
    finally:
        association.release()
    assert woken >= 10, f"{woken} of {len(reactor_waits)} waits ended by a wake-up"


def test_a_stopped_association_wakes_its_reactor(
    listener: tuple[StorageSCP, Spool], reactor_waits: list[tuple[scp._PromptReactor, bool]]
) -> None:
    """Stopping a receiving association from another thread (as the listener's shutdown does) wakes its
    reactor, which then ends."""
    server, _ = listener
    association = _verification_association(server)
    assert association.send_c_echo().Status == 0x0000
    (receiving,) = {prepared for prepared, _ in reactor_waits}
    time.sleep(0.05)  # the reactor is back in its wait
    reactor_waits.clear()
    receiving.kill()
    receiving.join(timeout=5)
    assert not receiving.is_alive()
    assert reactor_waits and reactor_waits[0][1], "the reactor's wait ran out instead of being woken"
    association.abort()


def test_the_stored_debug_line_is_built_only_when_debug_is_on(listener: tuple[StorageSCP, Spool]) -> None:
    """Each stored instance is logged at debug level, with its study pseudonymised; with debug off, the
    line is not built at all, and the instance is stored and answered Success either way."""
    server, spool = listener
    logger = logging.getLogger(scp.__name__)
    level = logger.level
    events = []
    try:
        for debug in (False, True):
            logger.setLevel(logging.DEBUG if debug else logging.INFO)
            dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
            ae = AE(ae_title="SENDER")
            ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
            association = ae.associate("127.0.0.1", server.port, ae_title="DICOMNODE")
            assert association.is_established
            with capture_logs() as captured:
                try:
                    assert association.send_c_store(dataset).Status == 0x0000
                finally:
                    association.release()
            events.append([event for event in captured if event["event"] == "instance stored"])
    finally:
        logger.setLevel(level)
    assert len(list(spool.files())) == 2
    assert events[0] == []
    (stored,) = events[1]
    assert stored["duplicate"] is False
    assert stored["study"] != dataset.StudyInstanceUID and len(stored["study"]) == 16


def test_sleeps_outside_a_receiving_reactor_are_plain_sleeps(listener: tuple[StorageSCP, Spool]) -> None:
    """Once the listener has taken pynetdicom's ``time``, a sleep on any other thread (a requestor's
    association, the node's own) sleeps as long as asked, whatever its length."""
    server, _ = listener
    # Once the listener has prepared an association, pynetdicom's time is taken.
    _verification_association(server).release()
    patched = vars(pynetdicom.association)["time"]
    assert isinstance(patched, scp._ReactorTime)
    for seconds in (scp._PYNETDICOM_REACTOR_PAUSE_S, 0.02):
        started = time.monotonic()
        patched.sleep(seconds)
        assert time.monotonic() - started >= seconds
    assert patched.monotonic is time.monotonic


def _eventfds() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if "eventfd" in _link(fd))


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed since it was listed
        return ""


def test_each_association_releases_its_eventfd_when_it_ends(listener: tuple[StorageSCP, Spool]) -> None:
    """The descriptor an association waits on is closed as its network thread ends, not whenever the
    garbage collector gets to it: associations that come and go do not pile descriptors up."""
    server, _ = listener
    before = _eventfds()
    for _ in range(10):
        association = _verification_association(server)
        assert association.send_c_echo().Status == 0x0000
        association.release()
    deadline = time.monotonic() + 5
    while _eventfds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _eventfds() == before
