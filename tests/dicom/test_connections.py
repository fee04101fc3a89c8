"""The listener's admission bookkeeping (``_Connections``) on its own: which connections the watchdog
holds to the request deadline, with real sockets and a real pynetdicom association."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from node.dicom.scp import _Connections

DEADLINE_S = 2.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair: the node's end and the peer's."""
    node_end, peer_end = socket.socketpair()
    peer_end.settimeout(5)
    yield node_end, peer_end
    node_end.close()
    peer_end.close()


ADDRESS = ("127.0.0.4", 40000)


def _tracking(node_end: socket.socket, association: threading.Thread) -> tuple[_Connections, float]:
    """Connections that admitted ``node_end`` and attached ``association`` to it; when it opened."""
    connections = _Connections(16, 4, request_deadline_s=DEADLINE_S, pdu_deadline_s=60.0)
    assert connections.admit(node_end, ADDRESS)
    connections.attach(ADDRESS, association, meter=None)  # type: ignore[arg-type]
    return connections, connections._open[ADDRESS].opened


def test_a_connection_whose_association_has_not_started_yet_is_still_held_to_the_deadline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The association is attached before its thread starts; the watchdog must not forget it then."""
    node_end, peer_end = pair
    connections, opened = _tracking(node_end, Association(AE(), "acceptor"))

    assert connections.enforce(opened + 0.5) == []  # within the deadline: kept, not forgotten
    overdue = connections.enforce(opened + DEADLINE_S + 0.1)
    assert overdue == ["no whole association request within the deadline"]
    assert peer_end.recv(1) == b""  # the node's end was shut down: the peer sees the close


def test_a_connection_whose_association_has_ended_is_forgotten_not_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """An ended association's connection is no longer tracked: nothing is closed on its behalf."""
    node_end, peer_end = pair
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    connections, opened = _tracking(node_end, ended)

    assert connections.enforce(opened + DEADLINE_S + 0.1) == []
    assert ADDRESS not in connections._open
    node_end.sendall(b"x")
    assert peer_end.recv(1) == b"x"  # still open
