"""STOW-RS in: the node's own web server (uvicorn) storing instances through the same ingest as C-STORE."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from xml.etree.ElementTree import fromstring

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _load_xml_dataset
from requests import Session

from node.accounts.tokens import TokenStore
from node.config import WebSettings
from node.dicom.status import Status
from node.dicomweb.stow import StowIngest
from node.store.audit import AuditAction
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.spool import Spool
from node.web.server import WebServer
from tests.review.seed import Seeded
from tests.support import synthetic_mr
from tests.web.stow_client import CONTENT_TYPE, body, part, post, post_chunked, sop_uid

MAX_REQUEST = 1024 * 1024


@dataclass
class StowNode:
    """The node's web server with STOW-RS over a real ingest, spool and index."""

    url: str
    token: str
    tokens: TokenStore
    ingest: Ingest
    spool: Spool
    index: Index
    seeded: Seeded

    def stored(self) -> dict[str, bytes]:
        """SOP Instance UID -> the bytes of its spool file, for every indexed instance."""
        return {
            uid: (self.spool.root / path).read_bytes() for uid, path in self.index.instance_paths().items()
        }

    def audit(self, action: AuditAction) -> list[dict[str, object]]:
        return [entry.to_json() for entry in self.seeded.parts.audit.entries(action=action)]


def _start(seeded: Seeded, limits: IngestLimits) -> tuple[WebServer, StowNode]:
    data = seeded.settings.storage.data_dir
    spool = Spool(data / "spool")
    ingest = Ingest(spool, seeded.index, seeded.clock, limits)
    tokens = TokenStore(seeded.index)
    token = tokens.add("pacs-gateway", actor="test", address="test", now=seeded.clock.now())
    stow = StowIngest(
        sink=ingest,
        tokens=tokens,
        audit=seeded.parts.audit,
        metrics=seeded.metrics,
        max_request_bytes=MAX_REQUEST,
        max_instance_bytes=limits.max_instance_bytes,
    )
    settings = seeded.settings.model_copy(update={"web": WebSettings(port=0)})
    server = WebServer.build(settings, seeded.parts, seeded.metrics, seeded.clock, {}, stow=stow)
    server.start()
    node = StowNode(
        url=f"http://127.0.0.1:{server.port}/dicomweb",
        token=token,
        tokens=tokens,
        ingest=ingest,
        spool=spool,
        index=seeded.index,
        seeded=seeded,
    )
    return server, node


@pytest.fixture
def node(seeded: Seeded) -> Iterator[StowNode]:
    server, started = _start(seeded, IngestLimits(min_free_bytes=0, max_instance_bytes=64 * 1024))
    yield started
    server.stop()


def _study(data: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def test_instances_are_stored_as_received_and_the_answer_names_each(node: StowNode) -> None:
    """Three instances in one request: 200, each in the Referenced SOP Sequence, each spool file holding
    exactly the bytes of its part, the request audited under the sender's token name."""
    instances = [synthetic_mr() for _ in range(3)]
    answer = post(f"{node.url}/studies", body(part(data) for data in instances), node.token)
    assert answer.status == 200, answer.content
    assert answer.headers["content-type"] == "application/dicom+json"
    assert sorted(answer.referenced()) == sorted(sop_uid(data) for data in instances)
    assert answer.failed() == {}
    assert node.stored() == {sop_uid(data): data for data in instances}
    (entry,) = node.audit(AuditAction.STOW)
    assert entry["actor"] == "pacs-gateway"
    assert entry["details"] == {"stored": 3, "failed": 0, "complete": True}
    assert node.tokens.all()[0].last_used_at is not None


def test_a_dicomweb_client_stores_and_can_ask_for_the_xml_answer(node: StowNode) -> None:
    """dicomweb-client (a maintained STOW-RS client) stores through the node; the PS3.19 XML answer
    parses with its reader."""
    session = Session()
    session.headers["Authorization"] = f"Bearer {node.token}"
    client = DICOMwebClient(node.url, session=session)
    datasets = [pydicom.dcmread(BytesIO(synthetic_mr())) for _ in range(2)]
    answer = client.store_instances(datasets)
    assert sorted(str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence) == sorted(
        str(dataset.SOPInstanceUID) for dataset in datasets
    )
    assert len(node.stored()) == 2

    data = synthetic_mr()
    xml = post(
        f"{node.url}/studies", body([part(data)]), node.token, headers={"Accept": "application/dicom+xml"}
    )
    assert xml.status == 200
    assert xml.headers["content-type"] == "application/dicom+xml"
    parsed = _load_xml_dataset(fromstring(xml.content))
    assert str(parsed.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == sop_uid(data)


@pytest.mark.parametrize("token", [None, "not-a-token-the-node-made"])
def test_a_wrong_or_missing_token_is_refused_audited_and_nothing_is_stored(
    node: StowNode, token: str | None
) -> None:
    answer = post(f"{node.url}/studies", body([part(synthetic_mr())]), token)
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert node.stored() == {}
    (entry,) = node.audit(AuditAction.STOW_REFUSED)
    assert entry["actor"] == "-" and entry["address"] == "127.0.0.1"
    assert node.audit(AuditAction.STOW) == []


def test_a_revoked_token_is_refused_at_once(node: StowNode) -> None:
    node.tokens.revoke("pacs-gateway", actor="test", address="test", now=node.seeded.clock.now())
    answer = post(f"{node.url}/studies", body([part(synthetic_mr())]), node.token)
    assert answer.status == 401
    assert node.stored() == {}
    assert [entry["action"] for entry in node.audit(AuditAction.TOKEN_REVOKE)] == ["token_revoke"]


def test_an_oversized_body_is_refused_before_anything_is_stored(node: StowNode) -> None:
    """A Content-Length above web.stow_max_request_mb: 413, and not one of its instances is stored."""
    instances = [synthetic_mr() for _ in range(3)]
    content = body(part(data) for data in instances)
    padding = part(b"\0" * (MAX_REQUEST - len(content) + 1024), content_type="application/octet-stream")
    answer = post(f"{node.url}/studies", content + padding, node.token)
    assert answer.status == 413
    assert node.stored() == {}


def test_a_truncated_body_fails_the_part_cut_short_and_stores_the_rest(node: StowNode) -> None:
    """The body ends halfway through its third part, with no closing delimiter: 202, the two whole
    parts stored, the third failed (Cannot understand) and named by the UIDs that could be read."""
    instances = [synthetic_mr() for _ in range(3)]
    cut = instances[2][: len(instances[2]) // 2]
    content = body([part(instances[0]), part(instances[1]), part(cut)[: -len(b"\r\n")]], close=False)
    answer = post(f"{node.url}/studies", content, node.token)
    assert answer.status == 202, answer.content
    assert sorted(answer.referenced()) == sorted(sop_uid(data) for data in instances[:2])
    assert answer.failed() == {sop_uid(instances[2]): int(Status.CANNOT_UNDERSTAND)}
    assert node.stored() == {sop_uid(data): data for data in instances[:2]}
    (entry,) = node.audit(AuditAction.STOW)
    assert entry["details"] == {"stored": 2, "failed": 1, "complete": False}


def test_each_part_is_checked_like_a_c_store(node: StowNode) -> None:
    """Per part: another study than the URL names (0x0110), other bytes under a held UID (0x0111), a
    part that is not application/dicom, one bigger than the instance limit (0xA700), garbage (0xC000);
    a resent identical instance is stored (a duplicate). None stored: 409."""
    held = synthetic_mr()
    assert post(f"{node.url}/studies", body([part(held)]), node.token).status == 200
    study = _study(held)
    other_study = synthetic_mr()
    changed = held.replace(b"SYNTHETIC", b"SYNTHETIX")
    answer = post(
        f"{node.url}/studies/{study}",
        body(
            [part(other_study), part(changed), part(synthetic_mr(), "application/pdf"), part(b"\x01" * 300)]
        ),
        node.token,
    )
    assert answer.status == 409, answer.content
    failed = answer.failed()
    assert failed[sop_uid(other_study)] == Status.PROCESSING_FAILURE
    assert failed[sop_uid(held)] == Status.DUPLICATE_SOP_INSTANCE
    assert list(failed.values()).count(Status.CANNOT_UNDERSTAND) == 2
    assert node.stored() == {sop_uid(held): held}

    big = post(f"{node.url}/studies", body([part(synthetic_mr() + b"\0" * 70_000)]), node.token)
    assert big.status == 409, "a part over the instance limit is no reason to retry later"
    assert list(big.failed().values()) == [Status.OUT_OF_RESOURCES]

    again = post(f"{node.url}/studies/{study}", body([part(held)]), node.token)
    assert again.status == 200 and again.referenced() == [sop_uid(held)]


def test_a_body_that_is_not_multipart_related_dicom_is_refused(node: StowNode) -> None:
    data = synthetic_mr()
    assert post(f"{node.url}/studies", data, node.token, content_type="application/dicom").status == 415
    metadata = CONTENT_TYPE.replace("application/dicom", "application/dicom+json")
    assert post(f"{node.url}/studies", body([part(data)]), node.token, content_type=metadata).status == 415
    assert post(f"{node.url}/studies", body([]), node.token).status == 400
    assert node.stored() == {}


def test_a_full_node_answers_503_with_retry_after(seeded: Seeded, tmp_path: Path) -> None:
    """Below the free-disk floor every instance is refused (0xA700): 503 and Retry-After, as PS3.18
    asks of a busy origin server."""
    server, full = _start(seeded, IngestLimits(min_free_bytes=1 << 60))
    try:
        answer = post(f"{full.url}/studies", body([part(synthetic_mr())]), full.token)
        assert answer.status == 503
        assert answer.headers["retry-after"] == "60"
        assert list(answer.failed().values()) == [Status.OUT_OF_RESOURCES]
        assert full.stored() == {}
    finally:
        server.stop()


def test_a_chunked_body_is_read_up_to_the_size_limit_and_the_answer_names_what_was_stored(
    node: StowNode,
) -> None:
    """Without a Content-Length the limit is met while reading: the parts whole before it are stored and
    named, the part it cuts fails (0xA700); a body over it from its first part stores nothing (413)."""
    instances = [synthetic_mr() for _ in range(3)]
    padding = part(b"\0" * MAX_REQUEST, content_type="application/octet-stream")
    pieces = [padding[i : i + 65536] for i in range(0, len(padding), 65536)]
    chunks = [part(data) for data in instances] + pieces
    answer = post_chunked(f"{node.url}/studies", chunks, node.token)
    assert answer.status == 202, answer.content
    assert sorted(answer.referenced()) == sorted(sop_uid(data) for data in instances)
    assert list(answer.failed().values()) == [Status.OUT_OF_RESOURCES]
    assert node.stored() == {sop_uid(data): data for data in instances}

    nothing = post_chunked(f"{node.url}/studies", pieces, node.token)
    assert nothing.status == 413
    assert len(node.stored()) == 3
