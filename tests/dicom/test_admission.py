"""Connection admission against a running ``dicomnode serve``: strangers on the TCP port (idle sockets,
port scanners, peers that trickle or stop half-way through a PDU) cannot lock a sender out, and
SIGTERM is honoured whatever a peer does. Senders are DCMTK echoscu from 127.0.0.1; the strangers
connect from other loopback addresses (127.0.0.2 and up) unless a test says otherwise.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from node.config import DicomSettings
from tests.support import ECHOSCU, NodeServer, free_port, receiver_only_env, run_echoscu, wait_for

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0
MAX_ASSOCIATIONS = 2
PER_ADDRESS = 4
A_ASSOCIATE_RQ = 0x01


#: The admission settings of this module's nodes (the test of the defaults aside).
ADMISSION = {
    "DICOMNODE_DICOM__REQUEST_DEADLINE_S": str(DEADLINE_S),
    "DICOMNODE_DICOM__MAX_ASSOCIATIONS": str(MAX_ASSOCIATIONS),
    "DICOMNODE_DICOM__MAX_PENDING_PER_ADDRESS": str(PER_ADDRESS),
    "DICOMNODE_DICOM__MAX_PENDING_CONNECTIONS": "16",
}


def _node(root: Path, admission: dict[str, str] = ADMISSION, **extra: str) -> NodeServer:
    if not Path(ECHOSCU).exists():
        pytest.skip("DCMTK echoscu is not installed (apt-get install dcmtk)")
    return NodeServer(
        data_dir=root / "data",
        log_path=root / "node.log",
        port=free_port(),
        extra_env={**receiver_only_env(), **admission, "DICOMNODE_WEB__ENABLED": "false", **extra},
    ).start()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    """One node for the module (starting a node loads the model)."""
    server = _node(tmp_path_factory.mktemp("admission"))
    yield server
    server.stop()


def _stranger(port: int, source: str) -> socket.socket:
    """A TCP connection from ``source`` that sends nothing."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.bind((source, 0))
    peer.connect(("127.0.0.1", port))
    return peer


def _flood(stack: ExitStack, port: int, source: str, count: int) -> None:
    for _ in range(count):
        stack.enter_context(_stranger(port, source))


def _echo_until_success(port: int, limit_s: float) -> float:
    """Seconds until echoscu succeeds (fails the test after ``limit_s``)."""
    started = time.monotonic()
    wait_for(lambda: run_echoscu(port, timeout_s=10).returncode == 0, limit_s, "a successful C-ECHO", 0.2)
    return time.monotonic() - started


def _closed_by_peer(peer: socket.socket, within_s: float) -> float:
    """Seconds until the node closes ``peer`` (fails after ``within_s``)."""
    started = time.monotonic()
    peer.settimeout(within_s)
    try:
        while peer.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the node kept the connection open for over {within_s} s")
    return time.monotonic() - started


def _rss_and_threads(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["Threads"])


def test_a_flood_of_idle_sockets_from_another_address_does_not_keep_a_sender_out(node: NodeServer) -> None:
    """100 idle sockets from one address: a sender from another address is served at once."""
    with ExitStack() as stack:
        _flood(stack, node.port, "127.0.0.2", 100)
        waited = _echo_until_success(node.port, 5)
    print(f"100 idle sockets from another address: sender served after {waited:.2f} s")


def test_a_flood_from_the_senders_own_address_keeps_it_out_no_longer_than_the_request_deadline(
    node: NodeServer,
) -> None:
    """100 idle sockets from the sender's own address hold it back at most about one request deadline."""
    with ExitStack() as stack:
        _flood(stack, node.port, "127.0.0.1", 100)
        waited = _echo_until_success(node.port, DEADLINE_S + 8)
    print(f"100 idle sockets from the sender's address: sender served after {waited:.2f} s")
    assert waited <= DEADLINE_S + 3


def test_by_default_a_sender_whose_parallel_associations_are_all_still_negotiating_is_let_in(
    tmp_path: Path,
) -> None:
    """A PACS opens its parallel associations at once, and each is pending until the node has read its
    request. On the default settings, as many pending connections from the sender's address as one
    caller may hold associations (a busy node not yet reading them) leave room for one more. One
    receiver process, so that every connection meets in it."""
    settings = DicomSettings()
    defaults = _node(tmp_path, admission={}, DICOMNODE_DICOM__RECEIVER_PROCESSES="1")
    try:
        with ExitStack() as stack:
            _flood(stack, defaults.port, "127.0.0.1", settings.max_associations_per_caller)
            outcome = run_echoscu(defaults.port)
        assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    finally:
        defaults.stop()


def test_association_limits_count_negotiated_associations_only(node: NodeServer) -> None:
    """Idle sockets beyond MAX_ASSOCIATIONS do not count toward it: an echo still gets through."""
    with ExitStack() as stack:
        _flood(stack, node.port, "127.0.0.3", MAX_ASSOCIATIONS + 1)
        outcome = run_echoscu(node.port)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr


def test_an_association_request_trickled_byte_by_byte_is_cut_off_at_the_deadline(node: NodeServer) -> None:
    """A peer that sends an A-ASSOCIATE-RQ one byte every 0.5 s is closed after the request deadline."""
    with _stranger(node.port, "127.0.0.4") as peer:
        peer.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ, 0, 200))
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < DEADLINE_S + 5:
            try:
                peer.sendall(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
        assert closed, "the trickling peer was never cut off"
    assert time.monotonic() - started <= DEADLINE_S + 3


def test_a_half_sent_association_request_is_closed_at_the_deadline(node: NodeServer) -> None:
    """An A-ASSOCIATE-RQ 1000 bytes short of its declared length is not waited for forever."""
    with _stranger(node.port, "127.0.0.5") as peer:
        peer.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ, 0, 2000) + bytes(1000))
        waited = _closed_by_peer(peer, DEADLINE_S + 5)
    assert waited <= DEADLINE_S + 2


def test_connect_and_close_cycles_leave_no_threads_or_memory_behind(node: NodeServer) -> None:
    """500 connect/close cycles (a port scanner, a health check): threads return to where they were."""
    rss_before, threads_before = _rss_and_threads(node.pid)
    for _ in range(500):
        with _stranger(node.port, "127.0.0.6"):
            pass
    wait_for(lambda: _rss_and_threads(node.pid)[1] <= threads_before + 1, 10, "connection threads to end")
    rss_after, threads_after = _rss_and_threads(node.pid)
    print(f"500 connect/close cycles: RSS {rss_before} -> {rss_after} MB,", end=" ")
    print(f"threads {threads_before} -> {threads_after}")
    assert rss_after - rss_before < 50
    assert run_echoscu(node.port).returncode == 0


def test_sigterm_is_honoured_within_the_grace_period_while_a_peer_holds_a_half_sent_pdu(
    tmp_path: Path,
) -> None:
    """With a peer stuck half-way through a PDU (and a long request deadline), SIGTERM still stops the
    node within its grace period."""
    server = _node(tmp_path, DICOMNODE_DICOM__REQUEST_DEADLINE_S="600", DICOMNODE_DICOM__SHUTDOWN_GRACE_S="2")
    try:
        with _stranger(server.port, "127.0.0.7") as peer:
            peer.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ, 0, 2000) + bytes(1000))
            time.sleep(0.5)  # let the node's read of the PDU begin
            started = time.monotonic()
            code = server.terminate(timeout_s=15)
            stopped_s = time.monotonic() - started
    finally:
        server.stop()
    assert code == 0
    assert stopped_s <= 2 + 3, f"stopped after {stopped_s:.1f} s"
