"""Inbound DICOM TLS: the listener's context, and ``dicomnode serve`` against DCMTK ``+tls`` clients.

The DCMTK tests share two nodes per module (client certificate required, and optional) and compare
counts before and after each step, so they do not depend on their order. Every wait is on a deadline.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import DicomSettings
from node.dicom.tls import MINIMUM_VERSION, server_context
from node.errors import ConfigError
from tests.support import (
    ECHOSCU,
    STORESCU,
    NodeServer,
    dcmtk_env,
    file_dataset_bytes,
    free_port,
    receiver_only_env,
    run_echoscu,
    sunnybrook_files,
    synthetic_mr,
    wait_for,
)
from tests.tls_pki import OPENSSL, Credential, Pki, make_pki

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command line is not installed")
needs_dcmtk = pytest.mark.skipif(
    not (Path(STORESCU).exists() and Path(ECHOSCU).exists()), reason="DCMTK is not installed"
)
pytestmark = needs_openssl


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, server and client certificates, and an untrusted CA with its own client."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _settings(pki: Pki, **overrides: object) -> DicomSettings:
    values: dict[str, object] = {
        "tls_cert": pki.server.cert,
        "tls_key": pki.server.key,
        "tls_ca": pki.ca.cert,
        **overrides,
    }
    return DicomSettings.model_validate(values)


# -- the listener's context (no network) -----------------------------------------------------------


def test_server_context_requires_a_client_certificate_signed_by_the_ca(pki: Pki) -> None:
    """By default callers must present a certificate (CERT_REQUIRED), over TLS 1.2 at least."""
    context = server_context(_settings(pki))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == MINIMUM_VERSION == ssl.TLSVersion.TLSv1_2


def test_server_context_without_required_client_certificate(pki: Pki) -> None:
    """With the switch off a certificate is optional (but verified when sent); without a CA none is asked."""
    optional = server_context(_settings(pki, tls_require_client_cert=False))
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    anonymous = server_context(_settings(pki, tls_require_client_cert=False, tls_ca=None))
    assert anonymous.verify_mode == ssl.CERT_NONE


def _unusable(case: str, pki: Pki, root: Path) -> dict[str, object]:
    """The setting override that makes one file unusable."""
    if case == "missing certificate":
        return {"tls_cert": root / "absent.pem"}
    if case == "key is a directory":
        return {"tls_key": root}
    if case == "key of another certificate":
        return {"tls_key": pki.client.key}
    if case == "encrypted key":
        encrypted = root / "encrypted.key"
        subprocess.run(
            [str(OPENSSL), "pkey", "-in", str(pki.server.key), "-aes256", "-passout", "pass:secret",
             "-out", str(encrypted)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return {"tls_key": encrypted}
    not_a_ca = root / "not-a-ca.pem"
    not_a_ca.write_text("not a certificate\n")
    return {"tls_ca": not_a_ca}


@pytest.mark.parametrize(
    ("case", "variable", "message"),
    [
        ("missing certificate", "DICOMNODE_DICOM__TLS_CERT", "cannot read"),
        ("key is a directory", "DICOMNODE_DICOM__TLS_KEY", "cannot read"),
        ("key of another certificate", "DICOMNODE_DICOM__TLS_KEY", "KEY_VALUES_MISMATCH"),
        ("encrypted key", "DICOMNODE_DICOM__TLS_KEY", "encrypted"),
        ("CA file without a certificate", "DICOMNODE_DICOM__TLS_CA", "no PEM CA certificate"),
    ],
)
def test_unusable_files_are_config_errors_naming_the_setting(
    pki: Pki, tmp_path: Path, case: str, variable: str, message: str
) -> None:
    """Each unusable file is a ConfigError naming its environment variable, raised when building."""
    with pytest.raises(ConfigError) as raised:
        server_context(_settings(pki, **_unusable(case, pki, tmp_path)))
    assert str(raised.value).startswith(variable), str(raised.value)
    assert message in str(raised.value)


# -- dicomnode serve against DCMTK ---------------------------------------------------------------


def _tls_options(pki: Pki, credential: Credential | None) -> list[str]:
    """DCMTK options: present ``credential`` (or no certificate) and verify the node against the CA."""
    present = ["+tla"] if credential is None else ["+tls", str(credential.key), str(credential.cert)]
    return [*present, "+cf", str(pki.ca.cert)]


def _dcmtk(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=dcmtk_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def _echoscu(server: NodeServer, pki: Pki, credential: Credential | None) -> subprocess.CompletedProcess[str]:
    return _dcmtk(
        [ECHOSCU, *_tls_options(pki, credential), "-aet", "ECHOSCU", "-aec", "DICOMNODE",
         "127.0.0.1", str(server.port)]
    )  # fmt: skip


def _storescu(
    server: NodeServer, pki: Pki, credential: Credential | None, files: list[Path]
) -> subprocess.CompletedProcess[str]:
    return _dcmtk(
        [STORESCU, *_tls_options(pki, credential), "-aet", "STORESCU", "-aec", "DICOMNODE",
         "127.0.0.1", str(server.port), *map(str, files)]
    )  # fmt: skip


def _handshake_failures(server: NodeServer) -> list[dict[str, object]]:
    return server.log_events("tls handshake failed")


def _expect_one_more_failure(server: NodeServer, before: int) -> dict[str, object]:
    """Wait for the refused connection's warning line and return it."""
    records = wait_for(lambda: _handshake_failures(server)[before:], 30, "the 'tls handshake failed' warning")
    return records[0]


def _start(root: Path, pki: Pki, *, require_client_cert: bool) -> NodeServer:
    env = {
        **receiver_only_env(),
        "DICOMNODE_DICOM__TLS_CERT": str(pki.server.cert),
        "DICOMNODE_DICOM__TLS_KEY": str(pki.server.key),
        "DICOMNODE_DICOM__TLS_CA": str(pki.ca.cert),
        "DICOMNODE_DICOM__TLS_REQUIRE_CLIENT_CERT": str(require_client_cert).lower(),
        "DICOMNODE_WEB__ENABLED": "false",
    }
    return NodeServer(
        data_dir=root / "data", log_path=root / "node.log", port=free_port(), extra_env=env
    ).start()


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeServer]:
    """``dicomnode serve`` with DICOM TLS, requiring client certificates signed by the test CA."""
    server = _start(tmp_path_factory.mktemp("tls-node"), pki, require_client_cert=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def optional_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeServer]:
    """``dicomnode serve`` with DICOM TLS and ``tls_require_client_cert = false``."""
    server = _start(tmp_path_factory.mktemp("optional-node"), pki, require_client_cert=False)
    yield server
    server.stop()


@needs_dcmtk
@pytest.mark.integration
def test_node_logs_that_it_listens_with_tls(tls_node: NodeServer) -> None:
    """Each listener's start line (one per receiver process) says tls=true."""
    wait_for(lambda: " ready\n" in tls_node.log_path.read_text(), 30, "the start-up banner")
    listening = tls_node.log_events("listening")
    assert listening and {record["tls"] for record in listening} == {True}


@needs_dcmtk
@pytest.mark.integration
def test_echoscu_with_a_trusted_certificate_succeeds(tls_node: NodeServer, pki: Pki) -> None:
    """``echoscu +tls`` with a certificate signed by the CA gets C-ECHO Success."""
    result = _echoscu(tls_node, pki, pki.client)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_dcmtk
@pytest.mark.integration
def test_storescu_over_tls_stores_and_indexes(tls_node: NodeServer, pki: Pki, sunnybrook: Path) -> None:
    """``storescu +tls`` sends five Sunnybrook images; each is spooled byte-identical and indexed."""
    files = sunnybrook_files(sunnybrook)[:5]
    indexed = tls_node.indexed_count()
    result = _storescu(tls_node, pki, pki.client, files)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in files:
        stored = tls_node.spool_path_of(path)
        assert stored.is_file(), f"{path.name} is not in the spool"
        assert file_dataset_bytes(stored) == file_dataset_bytes(path)
    assert tls_node.indexed_count() == indexed + len(files)


@needs_dcmtk
@pytest.mark.integration
@pytest.mark.parametrize("client", ["untrusted certificate", "no certificate"])
def test_a_client_without_a_trusted_certificate_is_refused_and_nothing_is_stored(
    tls_node: NodeServer, pki: Pki, tmp_path: Path, client: str
) -> None:
    """A client whose certificate another CA signed, or that has none, is refused before any DICOM
    is exchanged: storescu fails, nothing is spooled or indexed, one warning is logged, and the
    listener goes on serving a trusted client."""
    credential = pki.untrusted_client if client == "untrusted certificate" else None
    sent = tmp_path / "one.dcm"
    sent.write_bytes(synthetic_mr())
    spooled, indexed, failures = (
        len(tls_node.spool_files()),
        tls_node.indexed_count(),
        len(_handshake_failures(tls_node)),
    )

    result = _storescu(tls_node, pki, credential, [sent])

    assert result.returncode != 0, result.stdout
    warning = _expect_one_more_failure(tls_node, failures)
    assert warning["level"] == "warning"
    assert str(warning["peer"]).startswith("127.0.0.1:")
    assert warning["reason"]
    assert not tls_node.spool_path_of(sent).exists()
    assert (len(tls_node.spool_files()), tls_node.indexed_count()) == (spooled, indexed)
    assert _echoscu(tls_node, pki, pki.client).returncode == 0, "the listener stopped serving"
    assert len(_handshake_failures(tls_node)) == failures + 1, "more than one warning per refusal"


@needs_dcmtk
@pytest.mark.integration
def test_a_plain_client_to_the_tls_port_is_refused(tls_node: NodeServer, pki: Pki) -> None:
    """A DICOM client without TLS cannot associate with the TLS listener, which keeps serving."""
    failures = len(_handshake_failures(tls_node))
    result = run_echoscu(tls_node.port)
    assert result.returncode != 0, result.stdout
    assert _expect_one_more_failure(tls_node, failures)["reason"]
    assert _echoscu(tls_node, pki, pki.client).returncode == 0, "the listener stopped serving"


@needs_dcmtk
@pytest.mark.integration
def test_a_silent_connection_does_not_hold_up_other_callers(tls_node: NodeServer, pki: Pki) -> None:
    """While a connection that never starts its handshake stays open, a trusted client is served;
    closing it unspoken (as a TCP health check does) logs no warning."""
    failures = len(_handshake_failures(tls_node))
    with socket.create_connection(("127.0.0.1", tls_node.port), timeout=10):
        result = _echoscu(tls_node, pki, pki.client)
        assert result.returncode == 0, result.stdout + result.stderr
    assert _echoscu(tls_node, pki, pki.client).returncode == 0
    assert len(_handshake_failures(tls_node)) == failures


@needs_dcmtk
@pytest.mark.integration
def test_without_required_client_certificates_a_client_without_one_stores(
    optional_node: NodeServer, pki: Pki, tmp_path: Path
) -> None:
    """With tls_require_client_cert=false, ``echoscu``/``storescu +tla`` (no certificate) succeed."""
    sent = tmp_path / "one.dcm"
    sent.write_bytes(synthetic_mr())
    echo = _echoscu(optional_node, pki, None)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    store = _storescu(optional_node, pki, None, [sent])
    assert store.returncode == 0, store.stdout + store.stderr
    assert optional_node.spool_path_of(sent).is_file()


@needs_dcmtk
@pytest.mark.integration
def test_without_required_client_certificates_an_untrusted_one_is_still_refused(
    optional_node: NodeServer, pki: Pki
) -> None:
    """A certificate that is presented must verify even when certificates are optional."""
    failures = len(_handshake_failures(optional_node))
    result = _echoscu(optional_node, pki, pki.untrusted_client)
    assert result.returncode != 0, result.stdout
    _expect_one_more_failure(optional_node, failures)


@pytest.mark.integration
def test_node_with_a_missing_certificate_file_does_not_start(tmp_path: Path, pki: Pki) -> None:
    """``dicomnode serve`` with a TLS certificate path that does not exist exits at startup, naming it."""
    missing = tmp_path / "absent.pem"
    server = NodeServer(
        data_dir=tmp_path / "data",
        log_path=tmp_path / "node.log",
        port=free_port(),
        extra_env={
            "DICOMNODE_DICOM__TLS_CERT": str(missing),
            "DICOMNODE_DICOM__TLS_KEY": str(pki.server.key),
            "DICOMNODE_DICOM__TLS_CA": str(pki.ca.cert),
            "DICOMNODE_WEB__ENABLED": "false",
        },
    )
    with pytest.raises(RuntimeError, match="exited early"):
        server.start()
    assert server.process is not None and server.process.returncode == 2
    lines = server.log_path.read_text().splitlines()
    assert lines[-1].startswith(f"error: DICOMNODE_DICOM__TLS_CERT: cannot read {missing}")
    assert not any("Traceback" in line for line in lines)


@pytest.mark.integration
def test_a_tls_peer_that_stops_half_way_through_its_association_request_is_cut_off(
    optional_node: NodeServer, pki: Pki
) -> None:
    """After a completed TLS handshake, a peer that sends part of an A-ASSOCIATE-RQ and stops is
    closed at the request deadline (10 s), as on a plain connection: TLS keeps no stranger around."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    with (
        socket.create_connection(("127.0.0.1", optional_node.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as peer,
    ):
        peer.sendall(struct.pack(">BBL", 0x01, 0, 2000) + bytes(1000))
        started = time.monotonic()
        try:
            while peer.recv(4096):
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass
        waited = time.monotonic() - started
    assert waited < 20, f"the half-sent request was held {waited:.0f} s"
