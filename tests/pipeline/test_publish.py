"""Publishing results into the outbox: draft SR and SC always, SEG on request, nothing for no-SAX studies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from node.app import Node
from node.clock import ManualClock
from node.config import load_settings
from tests.review.pipeline import subset
from tests.support import clear_dicomnode_env
from tests.validation import dciodvfy, uids_of

PHASES = 20
SLICES = range(4, 8)


def _build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, send_seg: bool) -> tuple[Node, ManualClock]:
    clear_dicomnode_env(monkeypatch)
    monkeypatch.setenv("DICOMNODE_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DICOMNODE_STORAGE__MIN_FREE_MB", "1")
    monkeypatch.setenv("DICOMNODE_REPORTS__SEND_SEG", "true" if send_seg else "false")
    monkeypatch.setenv(
        "DICOMNODE_DELIVERY__DESTINATIONS", '[{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]'
    )
    clock = ManualClock()
    return Node.build(load_settings(), clock=clock), clock


def _measure(node: Node, clock: ManualClock, files: list[Path]) -> None:
    for path in files:
        node.ingest.store(path.read_bytes())
    clock.advance(11)
    node.assembler.tick()
    node.workers[0].run_once()


def _subset(sunnybrook: Path) -> list[Path]:
    files = {int(path.stem): path for path in (sunnybrook / "SCD0000101").glob("*.dcm")}
    return [files[s * PHASES + p + 1] for s in SLICES for p in range(PHASES)]


@pytest.fixture
def with_seg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Node, ManualClock]]:
    node, clock = _build(tmp_path, monkeypatch, send_seg=True)
    yield node, clock
    node.index.close()


@pytest.fixture
def without_seg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Node, ManualClock]]:
    node, clock = _build(tmp_path, monkeypatch, send_seg=False)
    yield node, clock
    node.index.close()


def test_publisher_adds_seg_per_phase_when_enabled(
    with_seg: tuple[Node, ManualClock], sunnybrook: Path, tmp_path: Path
) -> None:
    """With SEND_SEG on, the outbox holds the draft SR, the SC and one valid SEG per cardiac phase."""
    node, clock = with_seg
    files = _subset(sunnybrook)
    _measure(node, clock, files)
    assert node.publisher.run_once() is True
    assert node.publisher.run_once() is False
    states = node.outbox.rows()
    kinds = sorted(row.kind for row in states)
    assert kinds == sorted(["draft_sr", "sc"] + ["seg"] * PHASES)
    assert {row.destination for row in states} == {"PACS@127.0.0.1:104"}
    seg_path = next(
        path for path in (node.settings.storage.data_dir / "outbox").rglob("*.dcm")
        if pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == SegmentationStorage
    )  # fmt: skip
    seg = pydicom.dcmread(seg_path)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["LV blood pool", "LV myocardium"]
    sources = uids_of([pydicom.dcmread(path, stop_before_pixels=True) for path in files])
    assert dciodvfy(seg, tmp_path / "seg.dcm", sources).errors == ()


def test_publishing_twice_schedules_nothing_new(
    without_seg: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """Publishing a result again (as after a crash) derives the same UIDs and adds nothing to the outbox."""
    node, clock = without_seg
    _measure(node, clock, _subset(sunnybrook))
    node.publisher.run_once()
    first = sorted(row.sop_instance_uid for row in node.outbox.rows())
    assert len(first) == 2
    with node.index.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE results SET published = 0")
    assert node.publisher.run_once() is True
    assert sorted(row.sop_instance_uid for row in node.outbox.rows()) == first


def test_a_result_whose_reports_cannot_be_built_does_not_hold_up_the_next(
    without_seg: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """A result whose reports fail to build is logged and passed over; the next study's reports go out."""
    node, clock = without_seg
    first = _subset(sunnybrook)
    _measure(node, clock, first)
    [broken] = node.queue.results_for_study(_study_of(first))
    (node.settings.storage.data_dir / "results" / str(broken.labels_path)).write_bytes(b"not an npz")
    second = subset(sunnybrook, "SCD0000201")
    _measure(node, clock, second)
    [measured] = node.queue.results_for_study(_study_of(second))

    assert node.publisher.run_once() is True  # the broken one: logged, marked, not retried
    assert node.publisher.run_once() is True
    assert node.publisher.run_once() is False
    assert {row.result_id for row in node.outbox.rows()} == {measured.id}


def _study_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
