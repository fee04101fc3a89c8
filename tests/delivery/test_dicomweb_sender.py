"""DICOMweb destinations: STOW-RS through the outbox, each object's outcome read from the answer."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from node.clock import ManualClock
from node.config import DeliverySettings, DicomwebDestination, Settings
from node.delivery.sender import DeliverySender
from node.dicom.status import Status
from node.domain import OutboxKind
from node.errors import ConfigError
from node.preflight import destination_files
from node.store.index import Index
from node.store.outbox import DEAD, DELIVERED, PENDING, Outbox, OutgoingObject
from node.store.spool import Spool
from tests.delivery.peer import outgoing_object
from tests.delivery.stow_peer import Answer, StowRequest, running_stow_peer
from tests.support import free_port
from tests.tls_pki import make_pki

STUDY = "1.2.826.0.1.3680043.10.77"
TOKEN = "s3cret-token-of-the-archive"


class Harness:
    """An outbox and a sender over one data directory, sending to one DICOMweb destination."""

    def __init__(self, data_dir: Path, destination: DicomwebDestination, ca: Path | None = None) -> None:
        self.destination = destination
        self.settings = DeliverySettings(
            destinations=[destination], max_attempts=3, backoff_initial_s=5, backoff_max_s=60, timeout_s=5
        )
        self.clock = ManualClock()
        self.index = Index.open(f"sqlite:///{data_dir / 'index.sqlite3'}")
        self.outbox = Outbox(self.index, Spool(data_dir / "outbox"))
        self.sender = DeliverySender(
            outbox=self.outbox,
            settings=self.settings,
            calling_ae_title="DICOMNODE",
            clock=self.clock,
            claimant="test-host:1:sender",
            dicomweb_ca=ca,
        )
        self.sent: dict[str, bytes] = {}

    def add(self, study: str = STUDY, sop_class: str | None = None) -> OutgoingObject:
        item, data = outgoing_object(study, sop_class) if sop_class else outgoing_object(study)
        assert self.outbox.add(item, data, [self.destination], self.clock.now())
        self.sent[item.sop_instance_uid] = data
        return item

    def states(self) -> dict[str, tuple[str, int, int | None, str | None]]:
        """Per SOP Instance UID: state, attempts, last status, last error."""
        return {
            row.sop_instance_uid: (str(row.state), row.attempts, row.last_status, row.last_error)
            for row in self.outbox.rows()
        }


def _destination(url: str, tmp_path: Path, **extra: object) -> DicomwebDestination:
    token_file = tmp_path / "archive.token"
    token_file.write_text(TOKEN + "\n")
    return DicomwebDestination.model_validate({"dicomweb": url, "token_file": token_file, **extra})


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.index.close()


def _harness(made: list[Harness], tmp_path: Path, url: str, **extra: object) -> Harness:
    harness = Harness(tmp_path, _destination(url, tmp_path, **extra))
    made.append(harness)
    return harness


def test_503_then_200_retries_with_backoff_and_the_archive_gets_the_objects_as_stored(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """An unavailable archive is a failed attempt; after the backoff the objects go in one request per
    study, with the bearer token, and arrive as the node stored them."""
    answers = iter([Answer(503, body=False), Answer(200)])
    with running_stow_peer(lambda _request: next(answers)) as peer:
        harness = _harness(make_harness, tmp_path, peer.url)
        items = [harness.add(), harness.add()]
        assert harness.sender.run_once() == 2
        assert {state for state in harness.states().values()} == {
            (PENDING, 1, None, "HTTP 503 Service Unavailable")
        }
        assert harness.sender.run_once() == 0, "retried before its backoff elapsed"
        harness.clock.advance(6)
        assert harness.sender.run_once() == 2
        assert {state[:3] for state in harness.states().values()} == {(DELIVERED, 2, int(Status.SUCCESS))}
        _first, second = peer.requests
        assert second.path == f"/dicom-web/studies/{STUDY}"
        assert second.headers["Authorization"] == f"Bearer {TOKEN}"
        assert second.headers["Content-Type"].startswith("multipart/related")
        assert sorted(second.uids()) == sorted(item.sop_instance_uid for item in items)
        for part in second.parts:
            received = pydicom.dcmread(BytesIO(part))
            kept = pydicom.dcmread(BytesIO(harness.sent[str(received.SOPInstanceUID)]))
            assert received == kept and received.file_meta == kept.file_meta


def test_409_with_one_failed_instance_fails_that_object_and_the_others_go_again_without_it(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """409 naming one failed instance and storing nothing else: the failed object is a failed attempt
    with its Failure Reason; the others are sent again at once, alone, and delivered."""

    def script(request: StowRequest) -> Answer:
        uids = request.uids()
        if bad.sop_instance_uid in uids:
            return Answer(409, failed={bad.sop_instance_uid: int(Status.OUT_OF_RESOURCES)}, stored=[])
        return Answer(200)

    with running_stow_peer(script) as peer:
        harness = _harness(make_harness, tmp_path, peer.url)
        bad, good, other = harness.add(), harness.add(), harness.add()
        harness.sender.run_once()
        states = harness.states()
        assert states[bad.sop_instance_uid] == (PENDING, 1, 0xA700, "destination failure reason 0xA700")
        assert states[good.sop_instance_uid][:3] == (DELIVERED, 1, 0)
        assert states[other.sop_instance_uid][:3] == (DELIVERED, 1, 0)
        assert [len(request.parts) for request in peer.requests] == [3, 2]
        assert bad.sop_instance_uid not in peer.requests[1].uids()


def test_partial_200_and_202_answers_are_read_per_instance(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """A 202 (its media type with a charset) naming one instance failed and one stored delivers that
    one only; an instance the answer does not name at all is not taken as delivered; 0x0122 (class
    not supported) and 0xC000 (cannot understand) are final at once."""

    def script(request: StowRequest) -> Answer:
        return Answer(
            202,
            failed={
                refused.sop_instance_uid: int(Status.SOP_CLASS_NOT_SUPPORTED),
                garbled.sop_instance_uid: int(Status.CANNOT_UNDERSTAND),
            },
            stored=[stored.sop_instance_uid],
            media_type="application/dicom+json; charset=utf-8",
        )

    with running_stow_peer(script) as peer:
        harness = _harness(make_harness, tmp_path, peer.url)
        stored = harness.add()
        refused = harness.add(sop_class=Comprehensive3DSRStorage)
        silent = harness.add()
        garbled = harness.add()
        harness.sender.run_once()
        states = harness.states()
        assert states[garbled.sop_instance_uid] == (
            DEAD, 1, None, "destination refused it: failure reason 0xC000"
        )  # fmt: skip
        assert states[stored.sop_instance_uid][0] == DELIVERED
        assert states[refused.sop_instance_uid] == (
            DEAD, 1, None, "destination does not accept Comprehensive 3D SR Storage"
        )  # fmt: skip
        assert states[silent.sop_instance_uid] == (
            PENDING, 1, None, "not confirmed by the destination (HTTP 202 Accepted)"
        )  # fmt: skip
        assert all(row.refused for row in harness.outbox.rows(state=DEAD))
        assert len(peer.requests) == 1


def test_a_202_without_its_list_or_an_unreadable_answer_is_not_taken_as_delivered(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """A 202 says some instances failed; without the list (or with a body that is no DICOM answer)
    nothing is marked delivered: a failed attempt, sent again after the backoff."""
    answers = iter([Answer(202, body=False), Answer(200, media_type="text/html")])
    with running_stow_peer(lambda _request: next(answers)) as peer:
        harness = _harness(make_harness, tmp_path, peer.url)
        item = harness.add()
        harness.sender.run_once()
        assert harness.states()[item.sop_instance_uid] == (
            PENDING, 1, None, "HTTP 202 Accepted without the instances it stored"
        )  # fmt: skip
        harness.clock.advance(6)
        harness.sender.run_once()
        assert harness.states()[item.sop_instance_uid] == (
            PENDING, 2, None, "answer not understood (HTTP 200 OK)"
        )  # fmt: skip


def test_a_4xx_that_names_no_instance_is_a_dead_letter_at_once(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """401 (a wrong token) will not change by retrying: dead-lettered with the reason; an operator's
    retry sends it again once the token is fixed."""
    with running_stow_peer(lambda _request: Answer(401, body=False)) as peer:
        harness = _harness(make_harness, tmp_path, peer.url)
        item = harness.add()
        harness.sender.run_once()
        assert harness.states()[item.sop_instance_uid] == (
            DEAD, 1, None, "destination refused the request: HTTP 401 Unauthorized"
        )  # fmt: skip
        harness.clock.advance(3600)
        assert harness.sender.probe_dead_letters() == 0, "a refusal was put back by the probe"
        assert len(peer.requests) == 1


def test_an_outage_dead_letters_and_is_sent_again_once_the_archive_answers(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """Unreachable past the attempt cap: dead letters; the probe finds the archive back and resends."""
    port = free_port()
    harness = _harness(make_harness, tmp_path, f"http://127.0.0.1:{port}/dicom-web")
    item = harness.add()
    for _ in range(3):
        harness.sender.run_once()
        harness.clock.advance(61)
    assert harness.states()[item.sop_instance_uid] == (DEAD, 3, None, "destination unreachable")
    assert harness.sender.probe_dead_letters() == 0
    with running_stow_peer(lambda _request: Answer(200), port=port) as peer:
        harness.clock.advance(61)
        assert harness.sender.probe_dead_letters() == 1
        harness.sender.run_once()
        assert harness.states()[item.sop_instance_uid][0] == DELIVERED
        assert len(peer.requests) == 1


def test_https_destination_is_verified_against_its_ca_and_basic_credentials_come_from_a_file(
    make_harness: list[Harness], tmp_path: Path
) -> None:
    """The archive's certificate is checked against the destination's CA (a server signed by another CA
    fails the handshake, and is retried); basic credentials are read from their file."""
    pki = make_pki(tmp_path / "pki")
    basic = tmp_path / "archive.basic"
    basic.write_text("node:pa55word\n")
    with running_stow_peer(lambda _request: Answer(200), tls=(pki.server.cert, pki.server.key)) as peer:
        harness = Harness(
            tmp_path,
            DicomwebDestination(dicomweb=peer.url, basic_auth_file=basic, ca=pki.ca.cert),
        )
        make_harness.append(harness)
        item = harness.add()
        harness.sender.run_once()
        assert harness.states()[item.sop_instance_uid][0] == DELIVERED
        expected = "Basic " + base64.b64encode(b"node:pa55word").decode()
        assert peer.requests[0].headers["Authorization"] == expected

    with running_stow_peer(
        lambda _request: Answer(200), tls=(pki.untrusted_server.cert, pki.untrusted_server.key)
    ) as peer:
        other = Harness(tmp_path / "other", DicomwebDestination(dicomweb=peer.url, ca=pki.ca.cert))
        make_harness.append(other)
        item = other.add()
        other.sender.run_once()
        state, attempts, _status, error = other.states()[item.sop_instance_uid]
        assert (state, attempts) == (PENDING, 1)
        assert error is not None and error.startswith("TLS handshake failed")
        assert peer.requests == []


def test_an_https_destination_without_its_own_ca_is_verified_against_the_dicom_tls_ca(
    make_harness: list[Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``ca`` on the destination: DICOM__TLS_CA verifies it, even where the environment names
    another bundle (REQUESTS_CA_BUNDLE would otherwise take over in requests)."""
    pki = make_pki(tmp_path / "pki")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca.cert))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(pki.other_ca.cert))
    with running_stow_peer(lambda _request: Answer(200), tls=(pki.server.cert, pki.server.key)) as peer:
        harness = Harness(tmp_path, DicomwebDestination(dicomweb=peer.url), ca=pki.ca.cert)
        make_harness.append(harness)
        item = harness.add()
        harness.sender.run_once()
        assert harness.states()[item.sop_instance_uid][0] == DELIVERED


def test_a_dicomweb_destination_is_configured_by_its_url_and_files(tmp_path: Path) -> None:
    """The destinations list takes DIMSE and DICOMweb entries side by side; credentials only as files;
    an unreadable file is named at start-up."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    settings = Settings.model_validate(
        {
            "delivery": {
                "destinations": [
                    {"ae_title": "PACS", "host": "pacs", "port": 104},
                    {"dicomweb": "https://archive.example/dicom-web/", "token_file": str(token)},
                    {"dicomweb": "https://other.example/dicom-web", "basic_auth_file": "/nonexistent"},
                ]
            }
        }
    )
    _, archive, _other = settings.delivery.destinations
    assert isinstance(archive, DicomwebDestination)
    assert archive.key == "https://archive.example/dicom-web"
    (problem,) = destination_files(settings)
    assert problem.startswith("DICOMNODE_DELIVERY__DESTINATIONS: item 2 (https://other.example/dicom-web)")
    for bad in (
        {"dicomweb": "ftp://archive/dicom-web"},
        {"dicomweb": "https://archive/dicom-web", "token": TOKEN},
        {"dicomweb": "https://archive", "token_file": "a", "basic_auth_file": "b"},
        {"dicomweb": "http://archive", "ca": "ca.pem"},
    ):
        with pytest.raises((ValueError, ConfigError)):
            Settings.model_validate({"delivery": {"destinations": [bad]}})
    assert OutboxKind.SC.report_object in archive.send
