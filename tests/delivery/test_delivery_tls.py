"""Outbound DICOM TLS: the delivery sender against a pynetdicom storage SCP serving TLS on loopback.

The peer (:class:`~tests.delivery.peer.RecordingSCP`) verifies the node's client certificate; the node
verifies the peer's against ``tls_ca``. A failed handshake is a failed attempt with its reason.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from node.clock import ManualClock
from node.config import DeliverySettings, Destination, DicomSettings
from node.delivery.sender import DeliverySender
from node.dicom.tls import DeliveryTLS, is_ip_address
from node.domain import OutboxKind
from node.errors import ConfigError
from node.store.index import Index
from node.store.outbox import DELIVERED, PENDING, DeliveryRow, Outbox, OutgoingObject
from node.store.spool import Spool
from tests.delivery.peer import RecordingSCP
from tests.support import free_port, synthetic_mr
from tests.tls_pki import OPENSSL, Credential, Pki, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command line is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, server and client certificates, and an untrusted CA with its own."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _node_tls(pki: Pki, *, client_certificate: bool = True) -> DicomSettings:
    """The node's ``[dicom]`` TLS settings: trusts ``pki.ca``, presents ``pki.client`` (or nothing)."""
    values: dict[str, object] = {"tls_ca": pki.ca.cert, "tls_require_client_cert": False}
    if client_certificate:
        values.update(tls_cert=pki.client.cert, tls_key=pki.client.key, tls_require_client_cert=True)
    return DicomSettings.model_validate(values)


def _peer_context(certificate: Credential, trusted_clients: Credential) -> ssl.SSLContext:
    """The peer's server context: presents ``certificate``, requires clients signed by ``trusted_clients``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    context.load_verify_locations(cafile=trusted_clients.cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class Sending:
    """An outbox with one object due to a TLS destination, and the sender that delivers it."""

    outbox: Outbox
    sender: DeliverySender
    destination: Destination
    sop_instance_uid: str

    def state(self) -> DeliveryRow:
        (row,) = self.outbox.rows()
        return row


@pytest.fixture
def sending(tmp_path: Path, pki: Pki) -> Iterator[Sending]:
    """One synthetic MR due to a TLS destination on 127.0.0.1 (free port), sender with the client TLS."""
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=free_port(), tls=True)
    settings = DeliverySettings(
        destinations=[destination], max_attempts=3, backoff_initial_s=5, backoff_max_s=60, timeout_s=10
    )
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    outbox = Outbox(index, Spool(tmp_path / "outbox"))
    clock = ManualClock()
    data = synthetic_mr()
    dataset = pydicom.dcmread(BytesIO(data))
    item = OutgoingObject(
        sop_instance_uid=str(dataset.SOPInstanceUID),
        sop_class_uid=str(dataset.SOPClassUID),
        study_instance_uid=str(dataset.StudyInstanceUID),
        kind=OutboxKind.SC,
        result_id=None,
    )
    assert outbox.add(item, data, [destination], clock.now())
    sender = DeliverySender(
        outbox=outbox,
        settings=settings,
        calling_ae_title="DICOMNODE",
        clock=clock,
        claimant="test-host:1:sender",
        tls=DeliveryTLS(_node_tls(pki)),
    )
    yield Sending(outbox, sender, destination, item.sop_instance_uid)
    index.close()


@contextlib.contextmanager
def _peer(port: int, context: ssl.SSLContext) -> Iterator[RecordingSCP]:
    peer = RecordingSCP(port=port, ssl_context=context).start()
    try:
        yield peer
    finally:
        peer.stop()


# -- delivery over TLS ---------------------------------------------------------------------------


@pytest.mark.integration
def test_an_object_is_delivered_over_tls_to_a_peer_signed_by_the_ca(sending: Sending, pki: Pki) -> None:
    """The peer, which requires a client certificate from the CA, receives the object; it is delivered."""
    with _peer(sending.destination.port, _peer_context(pki.server, trusted_clients=pki.ca)) as peer:
        assert sending.sender.run_once() == 1
    assert peer.received == [sending.sop_instance_uid]
    assert sending.state().state == DELIVERED


@pytest.mark.integration
def test_a_peer_configured_by_ip_address_is_verified_by_its_chain_not_its_name(
    sending: Sending, pki: Pki
) -> None:
    """A destination given as 127.0.0.1 accepts a CA-signed certificate that names another host."""
    context = _peer_context(pki.server_named_elsewhere, trusted_clients=pki.ca)
    with _peer(sending.destination.port, context) as peer:
        assert sending.sender.run_once() == 1
    assert peer.received == [sending.sop_instance_uid]
    assert sending.state().state == DELIVERED


@pytest.mark.integration
def test_a_peer_whose_certificate_another_ca_signed_is_a_failed_attempt(sending: Sending, pki: Pki) -> None:
    """The node refuses a peer not signed by tls_ca: nothing is sent, the attempt fails with the reason."""
    with _peer(sending.destination.port, _peer_context(pki.untrusted_server, trusted_clients=pki.ca)) as peer:
        assert sending.sender.run_once() == 1
    assert peer.received == []
    state = sending.state()
    assert (state.state, state.attempts) == (PENDING, 1)
    assert str(state.last_error).startswith("TLS handshake failed: certificate not accepted"), state


@pytest.mark.integration
def test_a_peer_refusing_the_node_certificate_is_a_failed_attempt(sending: Sending, pki: Pki) -> None:
    """A peer that trusts another CA for its clients refuses the node: a failed TLS attempt, nothing sent."""
    context = _peer_context(pki.server, trusted_clients=pki.other_ca)
    with _peer(sending.destination.port, context) as peer:
        assert sending.sender.run_once() == 1
    assert peer.received == []
    state = sending.state()
    assert state.state == PENDING
    # The peer's alert, or its closing the connection when that reaches the node first.
    refused = r"TLS handshake failed: (refused|connection closed) by the peer"
    assert re.match(refused, str(state.last_error)), state


@pytest.mark.integration
def test_a_plain_peer_on_a_tls_destination_is_a_failed_attempt(sending: Sending) -> None:
    """A peer without TLS at a destination configured with tls: the handshake fails, nothing is sent."""
    peer = RecordingSCP(port=sending.destination.port).start()
    try:
        assert sending.sender.run_once() == 1
    finally:
        peer.stop()
    assert peer.received == []
    assert str(sending.state().last_error).startswith("TLS handshake failed"), sending.state()


@pytest.mark.integration
def test_an_unreachable_tls_destination_is_unreachable_not_a_handshake_failure(sending: Sending) -> None:
    """Nothing listening: the reason stays "destination unreachable"."""
    assert sending.sender.run_once() == 1
    assert sending.state().last_error == "destination unreachable"


# -- the client contexts -------------------------------------------------------------------------


def test_outbound_tls_without_a_ca_is_a_config_error() -> None:
    """Without tls_ca there is nothing to verify a peer against: building the contexts fails, naming it."""
    with pytest.raises(ConfigError, match=r"^DICOMNODE_DICOM__TLS_CA: not set"):
        DeliveryTLS(DicomSettings(tls_require_client_cert=False))


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("::1", True), ("pacs.example.org", False), ("localhost", False)],
)
def test_ip_addresses_are_told_from_names(host: str, expected: bool) -> None:
    """IPv4 and IPv6 literals are addresses; anything else is a DNS name."""
    assert is_ip_address(host) is expected


def _handshake(tls: DeliveryTLS, certificate: Credential, host: str) -> str | None:
    """Handshake with a bare TLS server presenting ``certificate``, as ``host``; the recorded failure."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate.cert, certificate.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(OSError), server.wrap_socket(connection, server_side=True):
                pass

        thread = threading.Thread(target=serve)
        thread.start()
        context, server_hostname = tls.tls_args(host)
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        with contextlib.suppress(ssl.SSLError), context.wrap_socket(raw, server_hostname=server_hostname):
            pass
        raw.close()
        thread.join(timeout=10)
    return tls.handshake_failure(host)


def test_a_destination_named_by_dns_has_its_name_checked(pki: Pki) -> None:
    """By name, the certificate must carry the name: localhost passes with its certificate, fails with
    one for pacs.example.org (which passes by IP address)."""
    tls = DeliveryTLS(_node_tls(pki, client_certificate=False))
    assert _handshake(tls, pki.server, "localhost") is None
    failure = _handshake(tls, pki.server_named_elsewhere, "localhost")
    assert failure is not None and "Hostname mismatch" in failure, failure
    assert _handshake(tls, pki.server_named_elsewhere, "127.0.0.1") is None
