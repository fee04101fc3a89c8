"""Reports whose source images are frames of one Enhanced MR instance (no shared data needed).

A phantom cine (3 slices x 4 phases) is written as single-frame MR images and as one Enhanced MR
instance holding them as frames; the reports built from the multi-frame stack reference the instance
once, by Referenced Frame Number, and draw the same pixels as the single-frame twin.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from node.domain import BasalRule, QcStatus, StackResult
from node.images.frames import SpooledFrame
from node.pipeline.stacks import StackPlan, find_sax_stacks
from node.reports.codes import LVEDV, LVEF_MR, LVESV, ReviewStatus
from node.reports.errors import ReportError
from node.reports.sc import build_sc
from node.reports.seg import build_seg, build_seg_series
from node.reports.sources import (
    ReportSources,
    frame_number_of,
    load_report_sources,
    load_stack_headers,
    stack_frame_numbers,
)
from node.reports.sr import ImageReference, build_draft_sr, build_verified_sr, read_report
from tests.pipeline.test_odd_input import enhanced_mr, phantom_stack
from tests.reports.conftest import BLOOD_POOL, MODEL, MYOCARDIUM
from tests.reports.test_render_sc import CLASSES
from tests.reports.test_sr import OBSERVER
from tests.validation import dciodvfy, uids_of

SLICES, PHASES, SIDE = 3, 4, 32
ED, ES = 0, 2
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: Where the phantom's blood pool and myocardium are drawn in the labels.
_YY, _XX = np.mgrid[:SIDE, :SIDE]
_RADIUS = np.hypot(_YY - SIDE / 2, _XX - SIDE / 2)


@dataclass(frozen=True)
class Stack:
    """A stack plan, a plausible result on it and labels."""

    plan: StackPlan
    result: StackResult
    labels: npt.NDArray[np.uint8]

    def sources(self) -> ReportSources:
        return load_report_sources(self.plan.grid, self.result, Path("/"))


def _stack(plan: StackPlan) -> Stack:
    def uids(phase: int) -> tuple[str | None, ...]:
        return tuple(None if row[phase] is None else row[phase].header.sop_instance_uid for row in plan.grid)  # type: ignore[union-attr]

    labels = np.zeros((plan.slices, plan.phases, plan.rows, plan.columns), dtype=np.uint8)
    labels[..., _RADIUS < 11] = MYOCARDIUM
    labels[..., _RADIUS < 8] = BLOOD_POOL
    result = StackResult(
        study_instance_uid=plan.study_instance_uid,
        series_instance_uids=plan.series_instance_uids,
        frame_of_reference_uid=plan.frame_of_reference_uid,
        edv_ml=150.0,
        esv_ml=60.0,
        ef_pct=60.0,
        sv_ml=90.0,
        lv_mass_g=110.0,
        ed_phase=ED,
        es_phase=ES,
        slices=plan.slices,
        phases=plan.phases,
        volume_curve_ml=(150.0, 100.0, 60.0, 120.0),
        slice_spacing_mm=plan.slice_spacing_mm,
        pixel_spacing_mm=plan.pixel_spacing,
        qc_status=QcStatus.OK,
        qc_flags=(),
        confidence=0.9,
        qc_features=None,
        model=MODEL,
        basal_rule=BasalRule.PER_PHASE,
        ed_sop_instance_uids=uids(ED),
        es_sop_instance_uids=uids(ES),
        blood_pool_mm2=tuple((400.0, 300.0, 200.0, 350.0) for _ in range(plan.slices)),
        myocardium_mm2=tuple((300.0,) * plan.phases for _ in range(plan.slices)),
    )
    return Stack(plan=plan, result=result, labels=labels)


@dataclass(frozen=True)
class Twins:
    single: Stack
    multi: Stack
    #: The Enhanced MR header (the source of every frame).
    header: Dataset


@pytest.fixture
def twins(tmp_path: Path) -> Twins:
    """The phantom as single frames and as one Enhanced MR instance, each laid out as a stack."""
    single = phantom_stack(tmp_path / "single", slices=SLICES, phases=PHASES, side=SIDE)
    positions = [(s, p) for s in range(SLICES) for p in range(PHASES)]
    multi = enhanced_mr(single, tmp_path / "multi", positions=positions)
    (single_plan,) = find_sax_stacks(single).stacks
    (multi_plan,) = find_sax_stacks([multi]).stacks
    header = pydicom.dcmread(multi.path, stop_before_pixels=True)
    return Twins(single=_stack(single_plan), multi=_stack(multi_plan), header=header)


def _frame(slice_index: int, phase: int) -> int:
    """Frame number of (slice, phase) in the Enhanced MR instance (frames are stored slice-major)."""
    return slice_index * PHASES + phase + 1


def _references(sr: Dataset, name: Code) -> list[tuple[str, list[int]]]:
    (measurement,) = hd.sr.utils.find_content_items(sr, name=name, recursive=True)
    return [
        (
            str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            [int(n) for n in item.ReferencedSOPSequence[0].get("ReferencedFrameNumber") or []],
        )
        for item in measurement.ContentSequence
        if item.ValueType == "IMAGE"
    ]


def test_sources_of_an_enhanced_mr_hold_the_instance_once_and_decode_the_drawn_frames(twins: Twins) -> None:
    """Report sources of a multi-frame stack list the instance once, number every slice's ED/ES frame,
    and decode the mid-ventricular ED and ES frames to the single-frame twin's pixels."""
    assert all(isinstance(cell, SpooledFrame) for row in twins.multi.plan.grid for cell in row)
    sources, expected = twins.multi.sources(), twins.single.sources()
    uid = str(twins.header.SOPInstanceUID)
    assert [str(d.SOPInstanceUID) for d in sources.evidence] == [uid]
    assert [str(d.SOPInstanceUID) for d in sources.ed_headers + sources.es_headers] == [uid, uid]
    assert sources.ed_frame_numbers == tuple(_frame(s, ED) for s in range(SLICES))
    assert sources.es_frame_numbers == tuple(_frame(s, ES) for s in range(SLICES))
    assert expected.ed_frame_numbers == expected.es_frame_numbers == (None,) * SLICES
    assert sources.mid_slice == expected.mid_slice
    assert sources.drawn_frame_numbers == (_frame(sources.mid_slice, ED), _frame(sources.mid_slice, ES))
    assert "PixelData" not in sources.ed_image
    np.testing.assert_array_equal(sources.ed_pixels, expected.ed_pixels)
    np.testing.assert_array_equal(sources.es_pixels, expected.es_pixels)
    assert not np.array_equal(sources.ed_pixels, sources.es_pixels)


def test_draft_sr_references_each_instance_once_with_the_frames_measured(
    twins: Twins, tmp_path: Path
) -> None:
    """The draft SR's measurements reference the Enhanced MR instance once each, with the ED (ES, or
    both) frames; the references read back, a verified successor keeps them, and dciodvfy accepts both."""
    sources, uid = twins.multi.sources(), str(twins.header.SOPInstanceUID)
    draft = build_draft_sr(
        twins.multi.result,
        list(sources.evidence),
        series_instance_uid="1.2.826.0.1.3680043.10.999.92.1",
        sop_instance_uid="1.2.826.0.1.3680043.10.999.92.2",
        instance_number=1,
        now=NOW,
        ed_frame_numbers=sources.ed_frame_numbers,
        es_frame_numbers=sources.es_frame_numbers,
    )
    ed_frames = [_frame(s, ED) for s in range(SLICES)]
    es_frames = [_frame(s, ES) for s in range(SLICES)]
    assert _references(draft, LVEDV) == [(uid, ed_frames)]
    assert _references(draft, LVESV) == [(uid, es_frames)]
    assert _references(draft, LVEF_MR) == [(uid, ed_frames + es_frames)]
    (study,) = draft.CurrentRequestedProcedureEvidenceSequence
    assert [
        str(i.ReferencedSOPInstanceUID)
        for s in study.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    ] == [uid]
    content = read_report(draft)
    assert content.ed_images == (ImageReference(str(twins.header.SOPClassUID), uid, tuple(ed_frames)),)
    verified = build_verified_sr(
        draft,
        observer=OBSERVER,
        review=ReviewStatus.SIGNED_OFF,
        verified_at=NOW,
        sop_instance_uid="1.2.826.0.1.3680043.10.999.92.3",
        series_instance_uid="1.2.826.0.1.3680043.10.999.92.4",
        instance_number=1,
    )
    for name in (LVEDV, LVESV, LVEF_MR):
        assert _references(verified, name) == _references(draft, name)
    source_uids = uids_of([twins.header])
    assert dciodvfy(draft, tmp_path / "draft.dcm", source_uids).errors == ()
    assert dciodvfy(verified, tmp_path / "verified.dcm", source_uids).errors == ()


def test_draft_sr_refuses_frame_numbers_for_another_number_of_slices(twins: Twins) -> None:
    """Frame numbers that do not line up with the result's slices are refused."""
    sources = twins.multi.sources()
    with pytest.raises(ReportError, match="differ in number of slices"):
        build_draft_sr(
            twins.multi.result,
            list(sources.evidence),
            series_instance_uid="1.2.826.0.1.3680043.10.999.92.1",
            sop_instance_uid="1.2.826.0.1.3680043.10.999.92.2",
            instance_number=1,
            now=NOW,
            ed_frame_numbers=sources.ed_frame_numbers[1:],
        )


def test_secondary_capture_of_an_enhanced_mr_references_the_drawn_frames(
    twins: Twins, tmp_path: Path
) -> None:
    """The SC of a multi-frame stack takes Patient Orientation from the drawn frame's Plane Orientation
    and lists the instance once with the ED and ES frame numbers; dciodvfy accepts it."""
    sources, expected = twins.multi.sources(), twins.single.sources()
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)

    def sc(source: ReportSources, **frames: object) -> Dataset:
        return build_sc(
            rgb,
            source.ed_image,
            series_instance_uid="1.2.826.0.1.3680043.10.999.92.5",
            sop_instance_uid="1.2.826.0.1.3680043.10.999.92.6",
            instance_number=1,
            review=ReviewStatus.PENDING,
            now=NOW,
            referenced_images=(source.ed_image, source.es_image),
            **frames,  # type: ignore[arg-type]
        )

    built = sc(
        sources,
        source_frame_number=sources.drawn_frame_numbers[0],
        referenced_frame_numbers=sources.drawn_frame_numbers,
    )
    assert built.PatientOrientation == sc(expected).PatientOrientation
    (item,) = built.SourceImageSequence
    assert str(item.ReferencedSOPInstanceUID) == str(twins.header.SOPInstanceUID)
    assert [int(n) for n in item.ReferencedFrameNumber] == list(sources.drawn_frame_numbers)
    assert dciodvfy(built, tmp_path / "sc.dcm", uids_of([twins.header])).errors == ()
    with pytest.raises(ReportError, match="Image Orientation"):
        sc(sources)
    with pytest.raises(ReportError, match="differ in number"):
        sc(sources, source_frame_number=1, referenced_frame_numbers=(1,))


def _seg_frames(seg: Dataset) -> list[list[tuple[str, int]]]:
    """Per SEG frame, the (SOP Instance UID, frame number) of each source image it derives from."""
    return [
        [
            (str(source.ReferencedSOPInstanceUID), int(source.ReferencedFrameNumber))
            for derivation in frame.DerivationImageSequence
            for source in derivation.SourceImageSequence
        ]
        for frame in seg.PerFrameFunctionalGroupsSequence
    ]


def _segs(stack: Stack, headers: tuple[tuple[Dataset | None, ...], ...] | None = None) -> list[Dataset]:
    return build_seg_series(
        headers or load_stack_headers(stack.plan.grid, Path("/")),
        stack.labels,
        classes=CLASSES,
        model=MODEL,
        series_instance_uid="1.2.826.0.1.3680043.10.999.92.7",
        sop_instance_uids=[f"1.2.826.0.1.3680043.10.999.92.8.{p}" for p in range(PHASES)],
        now=NOW,
        frame_numbers_by_cell=stack_frame_numbers(stack.plan.grid),
    )


def test_seg_of_an_enhanced_mr_derives_each_frame_from_its_own_source_frame(
    twins: Twins, tmp_path: Path
) -> None:
    """Each phase's SEG has the Enhanced MR instance as source and every frame derived from the one
    source frame of its slice at that phase (not every phase's frame at that position); valid."""
    uid = str(twins.header.SOPInstanceUID)
    segs = _segs(twins.multi)
    assert len(segs) == PHASES
    for phase, seg in enumerate(segs):
        frames = _seg_frames(seg)
        assert all(len(sources) == 1 for sources in frames)
        assert {source for sources in frames for source in sources} == {
            (uid, _frame(s, phase)) for s in range(SLICES)
        }
    assert dciodvfy(segs[ED], tmp_path / "seg.dcm", uids_of([twins.header])).errors == ()


def _per_frame_orientation(header: Dataset, tilt: bool = False) -> Dataset:
    """The header with Plane Orientation moved from the shared into every frame's functional groups;
    with ``tilt``, frame 1 (slice 0, phase 0) gets another orientation."""
    moved = copy.deepcopy(header)
    orientation = moved.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    del moved.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    for number, item in enumerate(moved.PerFrameFunctionalGroupsSequence, start=1):
        item.PlaneOrientationSequence = copy.deepcopy(orientation)
        if tilt and number == 1:
            item.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return moved


def test_seg_takes_the_orientation_of_the_frames_segmented(twins: Twins) -> None:
    """An orientation given per frame serves as the shared one highdicom needs when the frames
    segmented agree on it, whatever other frames of the instance say; frames segmented that disagree
    are refused with a ReportError."""
    grid = twins.multi.plan.grid
    segs = _segs(twins.multi, tuple(tuple(_per_frame_orientation(twins.header) for _ in row) for row in grid))
    shared = twins.header.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        for seg in segs
    ] == [shared.ImageOrientationPatient] * PHASES
    tilted = _per_frame_orientation(twins.header, tilt=True)
    headers = tuple(tuple(tilted for _ in row) for row in grid)
    with pytest.raises(ReportError, match="PlaneOrientationSequence"):
        _segs(twins.multi, headers)  # phase 0 segments the tilted frame
    phase = 1
    seg = build_seg(
        [tilted] * SLICES,
        twins.multi.labels[:, phase],
        classes=CLASSES,
        model=MODEL,
        series_instance_uid="1.2.826.0.1.3680043.10.999.92.7",
        sop_instance_uid="1.2.826.0.1.3680043.10.999.92.9",
        instance_number=phase + 1,
        now=NOW,
        frame_numbers=[_frame(s, phase) for s in range(SLICES)],
    )
    assert {source for sources in _seg_frames(seg) for source in sources} == {
        (str(twins.header.SOPInstanceUID), _frame(s, phase)) for s in range(SLICES)
    }


def test_a_single_frame_cell_has_no_frame_number(twins: Twins) -> None:
    """Single-frame cells report no frame number; frames of a multi-frame instance report theirs."""
    cell, frame = twins.single.plan.grid[1][2], twins.multi.plan.grid[1][2]
    assert cell is not None and frame is not None
    assert (frame_number_of(cell), frame_number_of(frame)) == (None, _frame(1, 2))
