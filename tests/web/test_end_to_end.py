"""A study measured by the real pipeline (real model, Sunnybrook subset) is reviewed through the web app."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from node.accounts.passwords import Passwords
from node.accounts.users import Role
from node.app import Node
from node.clock import ManualClock
from node.config import load_settings
from node.metrics import NodeMetrics
from node.review.parts import ReviewParts
from node.web.server import build_app, index_reachable
from tests.review.pipeline import process, subset
from tests.review.seed import PACS, PASSWORD
from tests.support import clear_dicomnode_env
from tests.web.conftest import csrf_token, login

pytestmark = pytest.mark.data


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Node, ManualClock]]:
    clear_dicomnode_env(monkeypatch)
    monkeypatch.setenv("DICOMNODE_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DICOMNODE_STORAGE__MIN_FREE_MB", "1")
    monkeypatch.setenv(
        "DICOMNODE_DELIVERY__DESTINATIONS",
        f'[{{"ae_title": "PACS", "host": "{PACS.host}", "port": {PACS.port}}}]',
    )
    clock = ManualClock()
    built = Node.build(load_settings(), clock=clock)
    yield built, clock
    built.index.close()


def test_pipeline_result_is_signed_off_through_the_worklist(
    node: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """A measured study shows on the worklist with its cine; signing it off queues a VERIFIED SR for PACS."""
    built, clock = node
    row = process(built, clock, subset(sunnybrook))
    assert built.publisher.run_once(), "the node's publisher stored no draft SR / secondary capture"
    parts = ReviewParts.build(built.settings, built.index, built.outbox, passwords=Passwords.fast_for_tests())
    parts.accounts.add_user(
        name="jsmith",
        role=Role.RADIOLOGIST,
        full_name="Smith^Jane",
        organization="St Elsewhere Radiology",
        password=PASSWORD,
        identification_code="RAD-042",
        actor="test",
        address="test",
        now=clock.now(),
    )
    app = build_app(
        built.settings,
        parts,
        NodeMetrics(),
        clock,
        {"index": index_reachable(built.index), "model": lambda: True},
    )
    with TestClient(app, follow_redirects=False) as client:
        assert login(client, "jsmith").status_code == 303
        worklist = client.get("/worklist?status=pending")
        assert row.id in worklist.text
        assert f"{row.edv_ml:.1f} mL" in worklist.text

        page = client.get(f"/results/{row.id}")
        assert page.status_code == 200
        assert "AI RESULT – NOT VERIFIED BY A RADIOLOGIST" in page.text
        assert "<svg" in page.text and "ED " in page.text

        cine = client.get(f"/results/{row.id}/cine.gif")
        assert cine.status_code == 200 and cine.headers["content-type"] == "image/gif"
        with Image.open(io.BytesIO(cine.content)) as gif:
            assert gif.n_frames == row.stack_result().phases
        picture = client.get(f"/results/{row.id}/sc.png")
        assert picture.status_code == 200
        with Image.open(io.BytesIO(picture.content)) as png:
            assert png.format == "PNG" and png.size[0] >= 512

        signed = client.post(f"/results/{row.id}/sign", data={"csrf_token": csrf_token(page)})
        assert signed.status_code == 303
        after = client.get(f"/results/{row.id}")
        assert "SIGNED OFF BY" in after.text and PACS.key in after.text
        assert client.get("/readyz").json() == {"ready": True, "checks": {"index": True, "model": True}}

    verified = [item for item in built.outbox.rows(result_id=row.id) if item.kind == "verified_sr"]
    assert [(item.destination, item.state) for item in verified] == [(PACS.key, "pending")]
    path = parts.store.outbox_path(row.id, "verified_sr")
    assert path is not None
    dataset = pydicom.dcmread(built.settings.storage.data_dir / "outbox" / path)
    assert (dataset.VerificationFlag, dataset.CompletionFlag, dataset.PreliminaryFlag) == (
        "VERIFIED",
        "COMPLETE",
        "FINAL",
    )
    observer = dataset.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Smith^Jane"
    assert observer.VerifyingObserverIdentificationCodeSequence[0].CodeValue == "RAD-042"
    assert dataset.StudyInstanceUID == row.study_instance_uid
