"""DICOM Segmentation of the predicted LV masks (node.reports.seg)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from node.domain import BasalRule, ModelIdentity
from node.reports.errors import ReportError
from node.reports.labels import LabelClasses
from node.reports.seg import (
    BLOOD_POOL_SEGMENT,
    MYOCARDIUM_SEGMENT,
    SERIES_DESCRIPTION,
    build_seg,
    build_seg_series,
    segment_descriptions,
)
from tests.reports.conftest import (
    BLOOD_POOL,
    MODEL,
    MYOCARDIUM,
    SYNTHETIC_ED,
    Case,
    Synthetic,
    read_back,
)
from tests.validation import dciodvfy, uids_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLASSES = LabelClasses(blood_pool=BLOOD_POOL, myocardium=MYOCARDIUM)
SERIES_UID = "1.2.826.0.1.3680043.10.999.92.1"


def _sop(phase: int) -> str:
    return f"1.2.826.0.1.3680043.10.999.92.2.{phase + 1}"


@pytest.fixture(scope="module")
def series(case: Case, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """The SEG series of the Sunnybrook stack, one file per phase."""
    folder = tmp_path_factory.mktemp("seg")
    instances = build_seg_series(
        case.headers,
        case.labels,
        classes=CLASSES,
        model=MODEL,
        series_instance_uid=SERIES_UID,
        sop_instance_uids=[_sop(phase) for phase in range(case.result.phases)],
        now=NOW,
        basal_rule=BasalRule.EVERY_PHASE,
    )
    paths = []
    for instance in instances:
        path = folder / f"{instance.InstanceNumber}.dcm"
        instance.save_as(path, enforce_file_format=True)
        paths.append(path)
    yield paths


def test_one_seg_instance_per_phase_covers_every_frame(series: list[Path], case: Case) -> None:
    """Each phase gets one SEG instance in one series; together they hold both segments of every cell."""
    assert len(series) == case.result.phases
    frames = 0
    for phase, path in enumerate(series):
        seg = read_back(path)
        assert seg.SOPClassUID == SegmentationStorage
        assert (seg.SeriesInstanceUID, seg.SOPInstanceUID, seg.InstanceNumber) == (
            SERIES_UID,
            _sop(phase),
            phase + 1,
        )
        assert seg.StudyInstanceUID == case.result.study_instance_uid
        assert seg.SegmentationType == "BINARY"
        assert seg.SeriesDescription == SERIES_DESCRIPTION
        frames += int(seg.NumberOfFrames)
    present = sum(cell is not None for row in case.plan.grid for cell in row)
    assert frames == 2 * present


@pytest.mark.parametrize("phase", range(20))
def test_every_seg_instance_passes_dciodvfy_except_for_the_sources_own_uids(
    phase: int, series: list[Path], case: Case, tmp_path: Path
) -> None:
    """dciodvfy finds no error in any SEG instance other than leading zeros of UIDs copied from the source."""
    validation = dciodvfy(read_back(series[phase]), tmp_path / "seg.dcm", case.source_uids)
    assert validation.errors == (), validation.output


def test_segments_are_coded_lv_blood_pool_and_myocardium_by_the_model(series: list[Path]) -> None:
    """Segment 1 is blood in the left ventricle, segment 2 the LV myocardium; both AUTOMATIC by the model,
    whose parameters say how the masks were made."""
    seg = read_back(series[0])
    blood, myocardium = seg.SegmentSequence
    assert (blood.SegmentNumber, blood.SegmentLabel) == (BLOOD_POOL_SEGMENT, "LV blood pool")
    assert blood.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    assert blood.SegmentedPropertyTypeCodeSequence[0].CodeValue == "87612001"
    assert blood.AnatomicRegionSequence[0].CodeValue == "87878005"
    assert (myocardium.SegmentNumber, myocardium.SegmentLabel) == (MYOCARDIUM_SEGMENT, "LV myocardium")
    assert myocardium.SegmentedPropertyTypeCodeSequence[0].CodeValue == "49848007"
    for segment in (blood, myocardium):
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL.name, MODEL.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        # How the masks were made: the basal rule cleared frames, and the exact model files.
        assert MODEL.sha256 is not None and MODEL.companion_sha256 is not None
        parameters = segment.SegmentationAlgorithmIdentificationSequence
        assert hd.AlgorithmIdentificationSequence.from_sequence(parameters).parameters == {
            "basal_rule": "every_phase",
            "model_sha256": MODEL.sha256,
            "companion_sha256": MODEL.companion_sha256,
        }


def test_a_result_that_records_no_rule_or_hashes_gives_its_segments_no_algorithm_parameters() -> None:
    """A result an older node measured: the segments name the model and leave the parameters out
    (Algorithm Parameters is type 3: absent, not empty)."""
    for segment in segment_descriptions(ModelIdentity(name=MODEL.name, version=MODEL.version)):
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL.name, MODEL.version)
        assert "AlgorithmParameters" not in algorithm


def test_each_frame_holds_its_source_images_mask(series: list[Path], case: Case) -> None:
    """At ED each frame references its source image, sits at its position and equals that cell's mask."""
    phase = case.result.ed_phase
    seg = read_back(series[phase])
    by_uid = {
        str(cell.SOPInstanceUID): (index, cell)
        for index, row in enumerate(case.headers)
        if (cell := row[phase]) is not None
    }
    pixels = seg.pixel_array
    seen = set()
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        slice_index, header = by_uid[uid]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in header.ImagePositionPatient], atol=1e-3)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = BLOOD_POOL if segment == BLOOD_POOL_SEGMENT else MYOCARDIUM
        assert np.array_equal(pixels[frame].astype(bool), case.labels[slice_index, phase] == value)
        seen.add((uid, segment))
    assert len(seen) == 2 * len(by_uid)
    assert (case.labels[:, phase] == BLOOD_POOL).any()


def _series_per_slice(synthetic: Synthetic) -> list[Dataset]:
    frames = []
    for index, row in enumerate(synthetic.headers):
        dataset = row[SYNTHETIC_ED]
        dataset.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.999.93.{index + 1}"
        frames.append(dataset)
    return frames


def test_a_stack_of_one_series_per_slice_is_segmented(synthetic: Synthetic, tmp_path: Path) -> None:
    """Slices from different series still give one SEG instance that lists every series as a source."""
    frames = _series_per_slice(synthetic)
    seg = build_seg(
        frames,
        synthetic.labels[:, SYNTHETIC_ED],
        classes=CLASSES,
        model=MODEL,
        series_instance_uid=SERIES_UID,
        sop_instance_uid=_sop(0),
        instance_number=1,
        now=NOW,
    )
    validation = dciodvfy(seg, tmp_path / "seg.dcm", uids_of(frames))
    assert validation.errors == (), validation.output
    listed = {
        str(series.SeriesInstanceUID)
        for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", [])
        for series in study.ReferencedSeriesSequence
    } | {str(series.SeriesInstanceUID) for series in seg.ReferencedSeriesSequence}
    assert listed == {str(d.SeriesInstanceUID) for d in frames}
    assert int(seg.NumberOfFrames) == 2 * len(frames)


def test_inconsistent_frames_of_reference_get_the_first_images(synthetic: Synthetic) -> None:
    """Source images that each carry their own Frame of Reference UID are segmented in the first one's."""
    frames = [row[SYNTHETIC_ED] for row in synthetic.headers]
    for index, dataset in enumerate(frames):
        dataset.FrameOfReferenceUID = f"1.2.826.0.1.3680043.10.999.94.{index + 1}"
    seg = build_seg(
        frames,
        synthetic.labels[:, SYNTHETIC_ED],
        classes=CLASSES,
        model=MODEL,
        series_instance_uid=SERIES_UID,
        sop_instance_uid=_sop(0),
        instance_number=1,
        now=NOW,
    )
    assert seg.FrameOfReferenceUID == "1.2.826.0.1.3680043.10.999.94.1"
    assert frames[1].FrameOfReferenceUID == "1.2.826.0.1.3680043.10.999.94.2", "the sources are not modified"


def test_seg_refuses_labels_that_do_not_match_the_sources(synthetic: Synthetic) -> None:
    """Labels without one frame per source image, or a grid of another shape, are refused."""
    frames = [row[SYNTHETIC_ED] for row in synthetic.headers]
    with pytest.raises(ReportError):
        build_seg(
            frames[:2],
            synthetic.labels[:, SYNTHETIC_ED],
            classes=CLASSES,
            model=MODEL,
            series_instance_uid=SERIES_UID,
            sop_instance_uid=_sop(0),
            instance_number=1,
            now=NOW,
        )
    with pytest.raises(ReportError):
        build_seg_series(
            synthetic.headers,
            synthetic.labels[:, :2],
            classes=CLASSES,
            model=MODEL,
            series_instance_uid=SERIES_UID,
            sop_instance_uids=[_sop(0), _sop(1)],
            now=NOW,
        )
