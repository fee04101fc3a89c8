"""A Legacy Converted Enhanced MR cine goes through the node end to end, and reports like its single frames.

The same Sunnybrook subset (4 slices x 20 phases) is received twice by the real node (``Node.build``,
manual clock, released model): once as its 80 single-frame MR images, once converted by highdicom to
one Legacy Converted Enhanced MR instance. Each frame of the conversion names its source image in its
Conversion Source Attributes Sequence (0020,9172), so every frame reference of the multi-frame reports
is checked against the single-frame run's image references, independently of the node's own mapping.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import LegacyConvertedEnhancedMRImageStorage

from node.app import Node
from node.clock import ManualClock
from node.config import load_settings
from node.pipeline.stacks import find_sax_stacks
from node.reports.codes import LVEDV, LVEF_MR, LVESV, ReviewStatus
from node.reports.render import COLUMN_LEFT
from node.reports.sr import VerifyingObserver, build_verified_sr
from node.store.results import ResultRecord
from node.store.reviews import ReviewStore
from node.web.media import StudyMedia
from tests.review.pipeline import PHASES, SLICES, legacy_converted, process, subset
from tests.support import clear_dicomnode_env
from tests.validation import dciodvfy, uids_of

pytestmark = pytest.mark.data

#: Columns of the SC page left of the values column: ED and ES panels with captions, volume curve.
DRAWN_COLUMNS = COLUMN_LEFT - 16
OBSERVER = VerifyingObserver(name="Smith^Jane", organization="General Hospital Radiology")


@dataclass(frozen=True)
class Run:
    """One encoding of the subset through ingest, worker and publisher."""

    node: Node
    row: ResultRecord
    #: The outbox's objects read back, by kind (SEG: one per phase, by Instance Number).
    objects: dict[str, list[Dataset]]
    #: Every UID of the received files (the UIDs the reports may copy).
    source_uids: frozenset[str]


def _run(root: Path, files: list[Path], send_seg: bool) -> Run:
    with pytest.MonkeyPatch.context() as monkeypatch:
        clear_dicomnode_env(monkeypatch)
        monkeypatch.setenv("DICOMNODE_STORAGE__DATA_DIR", str(root / "data"))
        monkeypatch.setenv("DICOMNODE_STORAGE__MIN_FREE_MB", "1")
        monkeypatch.setenv("DICOMNODE_REPORTS__SEND_SEG", "true" if send_seg else "false")
        monkeypatch.setenv(
            "DICOMNODE_DELIVERY__DESTINATIONS", '[{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]'
        )
        clock = ManualClock()
        node = Node.build(load_settings(), clock=clock)
    row = process(node, clock, files)
    assert node.publisher.run_once(), "the publisher stored nothing"
    kinds = {state.sop_instance_uid: str(state.kind) for state in node.outbox.rows()}
    objects: dict[str, list[Dataset]] = {}
    for path in (node.settings.storage.data_dir / "outbox").rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        objects.setdefault(kinds[str(dataset.SOPInstanceUID)], []).append(dataset)
    for datasets in objects.values():
        datasets.sort(key=lambda dataset: int(dataset.InstanceNumber))
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    return Run(node=node, row=row, objects=objects, source_uids=uids_of(headers))


@pytest.fixture(scope="module")
def runs(sunnybrook: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Run]]:
    """The single-frame run (no SEG) and the Legacy Converted Enhanced MR run (with SEG)."""
    files = subset(sunnybrook)
    single = _run(tmp_path_factory.mktemp("single"), files, send_seg=False)
    converted = legacy_converted(files, tmp_path_factory.mktemp("converted"))
    multi = _run(tmp_path_factory.mktemp("multi"), [converted], send_seg=True)
    yield single, multi
    single.node.index.close()
    multi.node.index.close()


def _converted_header(runs: tuple[Run, Run]) -> Dataset:
    """The header of the converted instance as the node stored it."""
    _, multi = runs
    (path,) = (multi.node.settings.storage.data_dir / "spool").rglob("*.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.SOPClassUID == LegacyConvertedEnhancedMRImageStorage
    return header


def _conversion_sources(runs: tuple[Run, Run]) -> dict[int, str]:
    """Frame number of the converted instance -> SOP Instance UID of the single-frame image it holds."""
    return {
        number: str(item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID)
        for number, item in enumerate(_converted_header(runs).PerFrameFunctionalGroupsSequence, start=1)
    }


def _converted_uid(runs: tuple[Run, Run]) -> str:
    _, multi = runs
    (uid,) = set(multi.row.stack_result().ed_sop_instance_uids)
    return str(uid)


def _image_items(sr: Dataset, name: Code) -> list[Dataset]:
    (measurement,) = hd.sr.utils.find_content_items(sr, name=name, recursive=True)
    return [child for child in measurement.ContentSequence if child.ValueType == "IMAGE"]


def _referenced(items: list[Dataset]) -> list[tuple[str, list[int]]]:
    return [
        (
            str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            [int(n) for n in item.ReferencedSOPSequence[0].get("ReferencedFrameNumber") or []],
        )
        for item in items
    ]


def _as_frames(sources: dict[int, str], uids: list[str]) -> list[int]:
    """The frame numbers of the converted instance that hold the single-frame images ``uids``."""
    frame_of = {uid: number for number, uid in sources.items()}
    return [frame_of[uid] for uid in uids]


def test_converted_cine_is_measured_like_its_single_frames(runs: tuple[Run, Run]) -> None:
    """The node measures the one converted instance to the single-frame run's volumes, ED and ES."""
    single, multi = runs
    assert multi.row.outcome == single.row.outcome == "measured"
    same = ("slices", "phases", "ed_phase", "es_phase")
    assert {k: getattr(multi.row.stack_result(), k) for k in same} == {
        k: getattr(single.row.stack_result(), k) for k in same
    }
    assert (multi.row.stack_result().slices, multi.row.stack_result().phases) == (len(SLICES), PHASES)
    for volume in ("edv_ml", "esv_ml", "ef_pct"):
        assert getattr(multi.row.stack_result(), volume) == pytest.approx(
            getattr(single.row.stack_result(), volume), abs=0.1
        )
    assert len(set(multi.row.stack_result().ed_sop_instance_uids)) == 1


def test_draft_sr_references_the_instance_once_with_the_ed_and_es_frames(
    runs: tuple[Run, Run], tmp_path: Path
) -> None:
    """The draft SR lists the converted instance once as evidence, and each measurement references it
    once with the frames holding the single-frame run's ED (ES) images; dciodvfy finds no error."""
    single, multi = runs
    sources, uid = _conversion_sources(runs), _converted_uid(runs)
    (draft,) = multi.objects["draft_sr"]
    (expected,) = single.objects["draft_sr"]
    (study,) = draft.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert [str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence] == [uid]
    for name in (LVEDV, LVESV, LVEF_MR):
        single_uids = [ref for ref, _ in _referenced(_image_items(expected, name))]
        assert _referenced(_image_items(draft, name)) == [(uid, _as_frames(sources, single_uids))]
    assert len(_referenced(_image_items(draft, LVEF_MR))[0][1]) == 2 * len(SLICES)
    assert dciodvfy(draft, tmp_path / "draft.dcm", multi.source_uids).errors == ()


def test_verified_sr_keeps_the_frame_references(runs: tuple[Run, Run], tmp_path: Path) -> None:
    """Signing off the multi-frame draft gives a VERIFIED SR with the draft's frame references, valid."""
    _, multi = runs
    (draft,) = multi.objects["draft_sr"]
    verified = build_verified_sr(
        draft,
        observer=OBSERVER,
        review=ReviewStatus.SIGNED_OFF,
        verified_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        sop_instance_uid="1.2.826.0.1.3680043.10.999.91.1",
        series_instance_uid="1.2.826.0.1.3680043.10.999.91.2",
        instance_number=1,
    )
    for name in (LVEDV, LVESV, LVEF_MR):
        assert _referenced(_image_items(verified, name)) == _referenced(_image_items(draft, name))
    assert dciodvfy(verified, tmp_path / "verified.dcm", multi.source_uids).errors == ()


def test_secondary_capture_draws_and_references_the_ed_and_es_frames(
    runs: tuple[Run, Run], tmp_path: Path
) -> None:
    """The SC references the converted instance once, by the frames holding the single-frame SC's ED
    and ES images, and draws the single-frame SC's ED and ES panels and volume curve pixel for pixel;
    dciodvfy finds no error."""
    single, multi = runs
    sources, uid = _conversion_sources(runs), _converted_uid(runs)
    (sc,) = multi.objects["sc"]
    (expected,) = single.objects["sc"]
    (item,) = sc.SourceImageSequence
    assert str(item.ReferencedSOPInstanceUID) == uid
    assert [int(n) for n in item.ReferencedFrameNumber] == _as_frames(
        sources, [str(ref.ReferencedSOPInstanceUID) for ref in expected.SourceImageSequence]
    )
    # Right of the panels, the QC column differs: the conversion made the Frame of Reference one.
    np.testing.assert_array_equal(sc.pixel_array[:, :DRAWN_COLUMNS], expected.pixel_array[:, :DRAWN_COLUMNS])
    assert sc.PatientOrientation == expected.PatientOrientation
    assert dciodvfy(sc, tmp_path / "sc.dcm", multi.source_uids).errors == ()


def test_verified_secondary_capture_of_a_multi_frame_result(runs: tuple[Run, Run]) -> None:
    """The picture for a signed-off multi-frame result is built with the same frame references."""
    _, multi = runs
    (draft_sc,) = multi.objects["sc"]
    verified = multi.node.publisher.verified_secondary_capture(
        str(multi.row.id),
        observer_name="Smith^Jane",
        verified_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        review=ReviewStatus.SIGNED_OFF,
        amended=None,
        sop_instance_uid="1.2.826.0.1.3680043.10.999.91.3",
        series_instance_uid="1.2.826.0.1.3680043.10.999.91.4",
    )
    assert verified is not None
    assert verified.SourceImageSequence == draft_sc.SourceImageSequence


def test_seg_of_a_multi_frame_source_references_each_phase_frame(
    runs: tuple[Run, Run], tmp_path: Path
) -> None:
    """One SEG per phase has the converted instance as source, each frame deriving from exactly one
    source frame: the one at its plane position holding the single-frame run's image of that phase;
    the ED phase's SEG passes dciodvfy."""
    single, multi = runs
    header, uid = _converted_header(runs), _converted_uid(runs)
    sources = _conversion_sources(runs)
    (plan,) = find_sax_stacks(single.node.index.study_instances(str(single.row.study_instance_uid))).stacks
    segs = multi.objects["seg"]
    assert [int(seg.InstanceNumber) for seg in segs] == list(range(1, PHASES + 1))
    for phase, seg in enumerate(segs):
        images = {cell.header.sop_instance_uid for row in plan.grid if (cell := row[phase]) is not None}
        for frame in seg.PerFrameFunctionalGroupsSequence:
            (derivation,) = frame.DerivationImageSequence
            (source,) = derivation.SourceImageSequence
            number = int(source.ReferencedFrameNumber)
            assert str(source.ReferencedSOPInstanceUID) == uid
            assert sources[number] in images
            source_frame = header.PerFrameFunctionalGroupsSequence[number - 1]
            assert (
                frame.PlanePositionSequence[0].ImagePositionPatient
                == source_frame.PlanePositionSequence[0].ImagePositionPatient
            )
    ed = int(multi.row.stack_result().ed_phase)
    assert dciodvfy(segs[ed], tmp_path / "seg.dcm", multi.source_uids).errors == ()


def test_worklist_cine_of_a_multi_frame_result_is_the_single_frame_cine(runs: tuple[Run, Run]) -> None:
    """The study page's contoured cine renders from the converted instance's frames, identical to the
    single-frame run's, one GIF frame per phase."""
    single, multi = runs
    gifs = []
    for run in (single, multi):
        data_dir = run.node.settings.storage.data_dir
        gif = StudyMedia(run.node.index, ReviewStore(run.node.index), data_dir).cine_gif(run.row)
        assert gif is not None
        gifs.append(gif)
    with Image.open(io.BytesIO(gifs[1])) as image:
        assert image.format == "GIF" and image.n_frames == PHASES
    assert gifs[1] == gifs[0]
