"""Valid but odd input survives the pipeline: one slice, odd pixel spacing, 60 phases, 512 x 512,
Enhanced MR multi-frame cine, and a study of 5,000 instances.

Synthetic images give meaningless volumes, so where the released model runs these tests assert
structure (a result with the right slices and phases, labels on the original grid, QC flags), never
volumes. The Sunnybrook test compares volumes between two encodings of the same real series.
"""

from __future__ import annotations

import dataclasses
import math
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedMRImageStorage,
    RLELossless,
    generate_uid,
)

from node.config import InferenceSettings
from node.dicom.instance import SpooledInstance, parse_instance
from node.images.frames import SpooledFrame
from node.images.pixels import UnreadablePixels, read_cell
from node.inference.runner import load_segmenter
from node.pipeline.measure import MeasuredStack, StackMeasurer
from node.pipeline.offline import measure_paths
from node.pipeline.pixels import load_pixels
from node.pipeline.stacks import StackPlan, find_sax_stacks
from node.reports.sources import decode_frame, frame_pixels
from node.store.index import Index
from tests.pipeline.test_stacks import (
    RR_MS,
    SAX,
    SPACING_MM,
    Orientation,
    assert_accounted,
    cells,
    cine_stack,
    encode,
    mr_image,
    normal_of,
    only_stack,
    orientation,
    position_at,
)
from tests.review.pipeline import legacy_converted

#: Slices x phases of the synthetic Enhanced MR stack (small, so the model runs in a moment).
MF_SLICES, MF_PHASES, MF_SIDE = 4, 6, 48


def phantom(
    rows: int, columns: int, spacing_mm: float, slice_index: int, phase: int, phases: int
) -> np.ndarray:
    """A bright disc (blood pool) in a darker ring (myocardium) that contracts over the cycle."""
    r = (np.arange(rows) - rows / 2 + 0.5)[:, None] * spacing_mm
    c = (np.arange(columns) - columns / 2 + 0.5)[None, :] * spacing_mm
    distance = np.hypot(r, c)
    radius = (22.0 - 3.0 * slice_index) * (1.0 - 0.3 * math.sin(math.pi * phase / phases))
    image = np.full((rows, columns), 120.0)
    image[distance < radius + 8.0] = 400.0
    image[distance < radius] = 1000.0
    noise = np.random.default_rng(slice_index * 1000 + phase).normal(0.0, 20.0, (rows, columns))
    return np.clip(image + noise, 0, 4095).astype(np.uint16)


def phantom_stack(
    directory: Path, *, slices: int, phases: int, side: int, spacing_mm: float = 1.5, **options: object
) -> list[SpooledInstance]:
    """A cine stack of :func:`phantom` images written as single-frame files under ``directory``."""
    return cine_stack(
        study=str(options.pop("study", generate_uid())),
        slices=slices,
        phases=phases,
        rows=side,
        columns=side,
        pixel_spacing=(spacing_mm, spacing_mm),
        pixels=lambda s, p: phantom(side, side, spacing_mm, s, p, phases),
        directory=directory,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def measurer() -> StackMeasurer:
    """The released model (the newest in models/) behind the pipeline's measurer."""
    return StackMeasurer(load_segmenter(InferenceSettings()))


def assert_measured(measured: MeasuredStack, plan: StackPlan) -> None:
    """A result with the plan's slices and phases, one volume per phase, labels on the original grid."""
    result = measured.result
    assert (result.slices, result.phases) == (plan.slices, plan.phases)
    assert len(result.volume_curve_ml) == plan.phases
    assert measured.labels.shape == (plan.slices, plan.phases, plan.rows, plan.columns)
    assert measured.labels.dtype == np.uint8
    assert 0.0 <= result.confidence <= 1.0


# -- one slice ------------------------------------------------------------------------------------------


def test_single_slice_cine_is_no_stack_with_a_reason(tmp_path: Path, measurer: StackMeasurer) -> None:
    """A series with one slice position is no stack: 'no short-axis cine found', each image counted."""
    instances = phantom_stack(tmp_path, slices=1, phases=20, side=16)
    search = find_sax_stacks(instances)
    assert search.stacks == ()
    assert search.skipped == {"not_sax_group": 20}
    run = measure_paths([tmp_path], measurer)
    assert run.results == [] and run.failed_stacks == [] and run.unreadable == []
    assert run.studies_without_stack == [instances[0].header.study_instance_uid]
    assert run.skipped == {instances[0].header.study_instance_uid: {"not_sax_group": 20}}


def test_single_image_series_is_no_stack() -> None:
    """A series of one image (one slice, one phase) is no stack and raises nothing."""
    (image,) = cine_stack(study=generate_uid(), slices=1, phases=1)
    search = find_sax_stacks([image])
    assert search.stacks == ()
    assert search.skipped == {"not_sax_group": 1}


# -- inconsistent pixel spacing -------------------------------------------------------------------------


def test_slices_with_other_pixel_spacing_are_left_out_and_flagged(
    tmp_path: Path, measurer: StackMeasurer
) -> None:
    """Two interior slices with another Pixel Spacing are left out; the rest is measured, flagged."""
    odd = {2, 3}
    instances = cine_stack(
        study=generate_uid(),
        slices=7,
        phases=4,
        rows=32,
        columns=32,
        pixel_spacing=lambda s, p: (1.8, 1.8) if s in odd else (1.5, 1.5),
        pixels=lambda s, p: phantom(32, 32, 1.5, s, p, 4),
        directory=tmp_path,
    )
    search = find_sax_stacks(instances)
    plan = only_stack(search)
    assert (plan.slices, plan.phases, plan.pixel_spacing) == (5, 4, (1.5, 1.5))
    assert plan.flags == ("missing_slices", "inconsistent_geometry")
    assert search.skipped == {"inconsistent_geometry": 8}
    assert_accounted(search, instances)
    measured = measurer.measure(plan, Path("/"))
    assert_measured(measured, plan)
    assert {"missing_slices", "inconsistent_geometry"} <= set(measured.result.qc_flags)


def test_phases_with_other_pixel_spacing_become_missing_phases() -> None:
    """Images of one slice with another Pixel Spacing leave missing phases, interpolated and flagged."""
    instances = cine_stack(
        study=generate_uid(),
        slices=5,
        phases=6,
        pixel_spacing=lambda s, p: (1.4, 1.4) if s == 1 and p < 2 else (1.5, 1.5),
    )
    plan = only_stack(find_sax_stacks(instances))
    assert (plan.slices, plan.phases) == (5, 6)
    assert plan.grid[1][0] is None and plan.grid[1][1] is None
    assert plan.flags == ("missing_phases", "inconsistent_geometry")


def test_pixel_spacing_written_differently_agrees() -> None:
    """Pixel Spacing values within 0.001 mm of each other (rounding in export) are one geometry."""
    instances = cine_stack(
        study=generate_uid(),
        pixel_spacing=lambda s, p: (1.367188, 1.367188) if s % 2 else (1.3671875, 1.3671875),
    )
    plan = only_stack(find_sax_stacks(instances))
    assert (plan.slices, plan.phases, plan.flags) == (5, 4, ())


# -- 60 phases, 512 x 512 ------------------------------------------------------------------------------


def test_sixty_phases_are_measured_in_bounded_memory(tmp_path: Path, measurer: StackMeasurer) -> None:
    """A 60-phase stack is measured (more phases than in training is fine) and numpy's peak stays
    within about two float32 copies of the stack: the stack, normalised in place, and the percentile's
    sorted copy (the code before this test held four)."""
    side = 96
    instances = phantom_stack(tmp_path, slices=4, phases=60, side=side)
    plan = only_stack(find_sax_stacks(instances))
    assert (plan.slices, plan.phases, plan.flags) == (4, 60, ())
    stack_bytes = 4 * 60 * side * side * np.dtype(np.float32).itemsize
    tracemalloc.start()
    try:
        measured = measurer.measure(plan, Path("/"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_measured(measured, plan)
    # The stack itself, the percentile's sorted copy, labels (uint8) and per-batch buffers.
    assert peak < 2.6 * stack_bytes, f"peak {peak / 2**20:.1f} MiB for a {stack_bytes / 2**20:.1f} MiB stack"


def test_missing_cells_take_no_pixel_memory(tmp_path: Path) -> None:
    """load_pixels holds only the cells that have an image, in the order of ``present``'s true cells."""
    instances = phantom_stack(tmp_path, slices=5, phases=4, side=16, drop=frozenset({(1, 2), (3, 0)}))
    plan = only_stack(find_sax_stacks(instances))
    pixels = load_pixels(plan, Path("/"))
    assert pixels.frames.shape == (18, 16, 16)
    assert pixels.present.shape == (5, 4) and int(pixels.present.sum()) == 18
    assert not pixels.present[1, 2] and not pixels.present[3, 0]
    expected = [read_cell(cell, Path("/")) for cell in cells(plan)]
    np.testing.assert_array_equal(pixels.frames, np.stack(expected))


def test_512_matrix_is_measured_on_its_own_grid(tmp_path: Path, measurer: StackMeasurer) -> None:
    """A 512 x 512 stack (0.5 mm pixels, a 256 mm field) is measured and its labels come back at
    512 x 512.

    The phantom is a lone disc on a flat background; in a 358 mm field (512 at 0.7 mm) neither
    released model finds it (1.0.0 labelled 0.6 of its 31 mL), while real series of that field, such
    as Sunnybrook's 256 x 256 at 1.37 mm, are measured.
    """
    instances = phantom_stack(tmp_path, slices=3, phases=2, side=512, spacing_mm=0.5)
    plan = only_stack(find_sax_stacks(instances))
    assert (plan.rows, plan.columns, plan.pixel_spacing) == (512, 512, (0.5, 0.5))
    measured = measurer.measure(plan, Path("/"))
    assert_measured(measured, plan)
    assert measured.result.pixel_spacing_mm == (0.5, 0.5)
    assert measured.labels.any(), "the phantom's blood pool was found somewhere at 512 x 512"


# -- Enhanced MR multi-frame ----------------------------------------------------------------------------


def _sequence(**attributes: object) -> DicomSequence:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return DicomSequence([item])


def enhanced_mr(
    sources: Sequence[SpooledInstance],
    directory: Path,
    *,
    positions: Sequence[tuple[int, int]] | None = None,
    trigger_times: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
    series: str | None = None,
) -> SpooledInstance:
    """An Enhanced MR Image (PS3.3 A.36.2) holding the given single-frame images as its frames.

    Geometry goes into the Multi-frame Functional Groups (PS3.3 C.7.6.16): Pixel Measures, Plane
    Orientation and MR Image Frame Type shared; Plane Position, Cardiac Synchronization (unless
    ``trigger_times`` is False) and Frame Content (Stack ID, In-Stack Position Number, Temporal
    Position Index from ``positions``' (slice, phase)) per frame. Written to ``directory``, parsed back.
    """
    datasets = [pydicom.dcmread(source.path) for source in sources]
    first = datasets[0]
    ds = Dataset()
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = series or generate_uid()
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SeriesNumber = 30
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = "20250101101500"
    ds.ContentDate, ds.ContentTime = "20250101", "101500"
    ds.NumberOfFrames = len(datasets)
    ds.Rows, ds.Columns = first.Rows, first.Columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    shared.PixelMeasuresSequence = _sequence(PixelSpacing=list(first.PixelSpacing), SliceThickness=8.0)
    shared.PlaneOrientationSequence = _sequence(ImageOrientationPatient=list(first.ImageOrientationPatient))
    shared.MRImageFrameTypeSequence = _sequence(
        FrameType=["ORIGINAL", "PRIMARY", "M", "NONE"],
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast="UNKNOWN",
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for number, source in enumerate(datasets):
        item = Dataset()
        item.PlanePositionSequence = _sequence(ImagePositionPatient=list(source.ImagePositionPatient))
        if trigger_times:
            item.CardiacSynchronizationSequence = _sequence(
                NominalCardiacTriggerDelayTime=float(source.TriggerTime)
            )
        slice_index, phase = positions[number] if positions else (0, number)
        item.FrameContentSequence = _sequence(
            StackID="1",
            InStackPositionNumber=slice_index + 1,
            TemporalPositionIndex=phase + 1,
            DimensionIndexValues=[slice_index + 1, phase + 1],
        )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    pixels = np.stack([source.pixel_array for source in datasets]).astype(np.uint16)
    if transfer_syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        ds.compress(transfer_syntax, pixels, encoding_plugin="pydicom")
    return encode(ds, directory)


def test_enhanced_mr_is_written_and_read_back(tmp_path: Path) -> None:
    """The Enhanced MR test object reads back with its frames, per-frame positions and shared spacing."""
    sources = phantom_stack(tmp_path / "single", slices=2, phases=3, side=16)
    instance = enhanced_mr(
        sources, tmp_path / "multi", positions=[(s, p) for s in range(2) for p in range(3)]
    )
    dataset = pydicom.dcmread(instance.path)
    assert dataset.SOPClassUID == EnhancedMRImageStorage
    assert dataset.pixel_array.shape == (6, 16, 16)
    assert instance.header.number_of_frames == 6
    assert instance.header.image_position is None and instance.header.trigger_time is None
    positions = [
        item.PlanePositionSequence[0].ImagePositionPatient
        for item in dataset.PerFrameFunctionalGroupsSequence
    ]
    assert [list(map(float, p)) for p in positions] == [
        list(map(float, pydicom.dcmread(s.path).ImagePositionPatient)) for s in sources
    ]


def _grid_signature(plan: StackPlan) -> tuple[object, ...]:
    return (
        plan.slices,
        plan.phases,
        tuple(round(p, 3) for p in plan.slice_positions_mm),
        plan.slice_spacing_mm,
        plan.pixel_spacing,
        (plan.rows, plan.columns),
        plan.trigger_times_ms,
        plan.orientation,
        plan.flags,
    )


@pytest.fixture
def single_and_enhanced(tmp_path: Path) -> tuple[list[SpooledInstance], SpooledInstance]:
    """The same phantom cine as single-frame files and as one Enhanced MR instance (frames in slice order)."""
    single = phantom_stack(tmp_path / "single", slices=MF_SLICES, phases=MF_PHASES, side=MF_SIDE)
    positions = [(s, p) for s in range(MF_SLICES) for p in range(MF_PHASES)]
    return single, enhanced_mr(single, tmp_path / "multi", positions=positions)


def test_enhanced_mr_cine_is_the_same_stack_as_single_frames(
    single_and_enhanced: tuple[list[SpooledInstance], SpooledInstance],
) -> None:
    """An Enhanced MR cine gives the grid its single-frame twin gives, each cell a frame of the instance."""
    single, multi = single_and_enhanced
    expected = only_stack(find_sax_stacks(single))
    search = find_sax_stacks([multi])
    plan = only_stack(search)
    assert _grid_signature(plan) == _grid_signature(expected)
    assert search.skipped == {}
    assert_accounted(search, [multi], frames=MF_SLICES * MF_PHASES - 1)
    assert all(isinstance(cell, SpooledFrame) and cell.path == multi.path for cell in cells(plan))
    assert [[cell.frame_number for cell in row if isinstance(cell, SpooledFrame)] for row in plan.grid] == [
        [s * MF_PHASES + p + 1 for p in range(MF_PHASES)] for s in range(MF_SLICES)
    ]
    assert plan.series_instance_uids == (multi.header.series_instance_uid,)


def test_enhanced_mr_is_measured_like_its_single_frame_twin(
    single_and_enhanced: tuple[list[SpooledInstance], SpooledInstance], measurer: StackMeasurer
) -> None:
    """The pixels decoded from the frames equal the single-frame files', and so does every measurement."""
    single, multi = single_and_enhanced
    expected_plan = only_stack(find_sax_stacks(single))
    plan = only_stack(find_sax_stacks([multi]))
    np.testing.assert_array_equal(
        load_pixels(plan, Path("/")).frames, load_pixels(expected_plan, Path("/")).frames
    )
    np.testing.assert_array_equal(
        read_cell(plan.grid[2][3], Path("/")), read_cell(expected_plan.grid[2][3], Path("/"))
    )
    expected, measured = measurer.measure(expected_plan, Path("/")), measurer.measure(plan, Path("/"))
    assert_measured(measured, plan)
    np.testing.assert_array_equal(measured.labels, expected.labels)
    same = ("edv_ml", "esv_ml", "ef_pct", "ed_phase", "es_phase", "volume_curve_ml", "qc_flags", "confidence")
    assert {k: getattr(measured.result, k) for k in same} == {k: getattr(expected.result, k) for k in same}
    assert set(measured.result.ed_sop_instance_uids) == {multi.header.sop_instance_uid}


def test_enhanced_mr_one_instance_per_slice_is_one_stack(tmp_path: Path) -> None:
    """A stack sent as one Enhanced MR instance per slice, in one series, is grouped into one stack."""
    single = phantom_stack(tmp_path / "single", slices=4, phases=5, side=16)
    series = generate_uid()
    per_slice = [
        enhanced_mr(single[s * 5 : (s + 1) * 5], tmp_path / "multi", series=series) for s in range(4)
    ]
    plan = only_stack(find_sax_stacks(per_slice[::-1]))
    assert _grid_signature(plan) == _grid_signature(only_stack(find_sax_stacks(single)))
    assert [{cell.path for cell in row if cell} for row in plan.grid] == [
        {instance.path} for instance in per_slice
    ]


def _acquired_at(instance: SpooledInstance, when: str, series_number: int) -> SpooledInstance:
    """The Enhanced MR instance with every frame's Frame Acquisition DateTime set to ``when``."""
    dataset = pydicom.dcmread(instance.path)
    dataset.SeriesNumber = series_number
    for item in dataset.PerFrameFunctionalGroupsSequence:
        item.FrameContentSequence[0].FrameAcquisitionDateTime = when
    Path(instance.path).unlink()
    return encode(dataset, Path(instance.path).parent)


@pytest.mark.parametrize(
    ("stack_at", "repeat_at"),
    [
        ("20250101101500.000000+0100", "20250101104500.000000+0100"),
        ("20250101235500.000000+0100", "20250102000500.000000+0100"),  # repeated after midnight
    ],
)
def test_enhanced_mr_repeat_is_chosen_by_frame_acquisition_datetime_with_utc_offset(
    tmp_path: Path, stack_at: str, repeat_at: str
) -> None:
    """A slice acquired twice as Enhanced MR keeps the acquisition whose frames were acquired later,
    by Frame Acquisition DateTime, date and UTC offset and all; the later one has the lower Series Number."""
    single = phantom_stack(tmp_path / "single", slices=3, phases=4, side=16)
    series = generate_uid()
    per_slice = [
        enhanced_mr(single[s * 4 : (s + 1) * 4], tmp_path / "multi", series=series) for s in range(3)
    ]
    per_slice = [_acquired_at(instance, stack_at, 30) for instance in per_slice]
    repeat = _acquired_at(enhanced_mr(single[4:8], tmp_path / "repeat"), repeat_at, series_number=5)
    search = find_sax_stacks([*per_slice, repeat])
    plan = only_stack(search)
    assert (plan.slices, plan.phases) == (3, 4)
    assert {cell.path for cell in plan.grid[1] if cell} == {repeat.path}
    assert search.skipped == {"superseded_by_later_acquisition": 4}


def test_enhanced_mr_without_trigger_times_orders_phases_by_temporal_position(tmp_path: Path) -> None:
    """Without Cardiac Synchronization, frames stored out of order are phased by Temporal Position Index."""
    single = phantom_stack(tmp_path / "single", slices=3, phases=4, side=16)
    order = [(s, p) for p in reversed(range(4)) for s in range(3)]  # stored phase-major, time reversed
    multi = enhanced_mr(
        [single[s * 4 + p] for s, p in order], tmp_path / "multi", positions=order, trigger_times=False
    )
    plan = only_stack(find_sax_stacks([multi]))
    assert (plan.slices, plan.phases, plan.trigger_times_ms) == (3, 4, (None,) * 4)
    frame_of = {(s, p): number + 1 for number, (s, p) in enumerate(order)}
    assert [[cell.frame_number for cell in row if isinstance(cell, SpooledFrame)] for row in plan.grid] == [
        [frame_of[(s, p)] for p in range(4)] for s in range(3)
    ]


@pytest.mark.parametrize("transfer_syntax", [RLELossless, DeflatedExplicitVRLittleEndian])
def test_compressed_enhanced_mr_decodes_the_right_frames(tmp_path: Path, transfer_syntax: str) -> None:
    """An RLE Lossless or Deflated Enhanced MR decodes, frame by frame, to the single-frame images'
    pixels, for measuring and for the reports' pictures."""
    single = phantom_stack(tmp_path / "single", slices=3, phases=3, side=24)
    multi = enhanced_mr(
        single,
        tmp_path / "multi",
        positions=[(s, p) for s in range(3) for p in range(3)],
        transfer_syntax=transfer_syntax,
    )
    assert multi.header.transfer_syntax_uid == transfer_syntax
    plan = only_stack(find_sax_stacks([multi]))
    expected = load_pixels(only_stack(find_sax_stacks(single)), Path("/")).frames
    np.testing.assert_array_equal(load_pixels(plan, Path("/")).frames, expected)
    header = pydicom.dcmread(multi.path, stop_before_pixels=True)
    np.testing.assert_array_equal(decode_frame(Path(multi.path), header, 5), expected[4])


def _as_monochrome1(path: Path) -> None:
    """Rewrite the image at ``path`` as MONOCHROME1 showing the same picture: each stored value v
    becomes low + high - v within the range Bits Stored and Pixel Representation allow."""
    dataset = pydicom.dcmread(path)
    bits, signed = int(dataset.BitsStored), int(dataset.PixelRepresentation) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    stored = dataset.pixel_array.astype(np.int64)
    dataset.PixelData = (low + high - stored).astype(dataset.pixel_array.dtype).tobytes()
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(path)


def test_monochrome1_images_read_as_the_monochrome2_images_they_show(tmp_path: Path) -> None:
    """MONOCHROME1 (smallest value white) is turned around: single frames, the frames of an Enhanced
    MR and the reports' pictures all read as the MONOCHROME2 images showing the same picture."""
    single = phantom_stack(tmp_path / "single", slices=3, phases=3, side=24)
    multi = enhanced_mr(single, tmp_path / "multi", positions=[(s, p) for s in range(3) for p in range(3)])

    def pixels(instances: Sequence[SpooledInstance]) -> np.ndarray:
        return load_pixels(only_stack(find_sax_stacks(instances)), Path("/")).frames

    expected = pixels(single)
    for path in [Path(instance.path) for instance in single] + [Path(multi.path)]:
        _as_monochrome1(path)
    stored = pydicom.dcmread(single[0].path)
    assert stored.PhotometricInterpretation == "MONOCHROME1"
    assert not np.array_equal(stored.pixel_array, expected[0]), "the stored values were not turned around"
    np.testing.assert_array_equal(pixels(single), expected)
    np.testing.assert_array_equal(pixels([multi]), expected)
    np.testing.assert_array_equal(frame_pixels(stored), expected[0])
    header = pydicom.dcmread(multi.path, stop_before_pixels=True)
    np.testing.assert_array_equal(decode_frame(Path(multi.path), header, 2), expected[1])


def test_enhanced_mr_that_cannot_be_split_is_counted_not_raised(tmp_path: Path) -> None:
    """An Enhanced MR whose file is gone is counted as unreadable, one without functional groups as
    having no geometry; neither raises."""
    single = phantom_stack(tmp_path / "single", slices=3, phases=2, side=16)
    gone = enhanced_mr(single, tmp_path / "gone")
    Path(gone.path).unlink()
    bare = mr_image(
        study=single[0].header.study_instance_uid,
        series=generate_uid(),
        frame="1.2.3.4",
        iop=SAX,
        position=position_at(0.0),
        trigger_time=0.0,
        instance_number=1,
        sop_class=EnhancedMRImageStorage,
        directory=tmp_path / "bare",
    )
    search = find_sax_stacks([gone, bare, *single])
    assert only_stack(search).slices == 3
    assert search.skipped == {"no_geometry": 1, "unreadable": 1}


def test_frame_whose_pixels_cannot_be_read_is_an_unreadable_pixels_error(
    single_and_enhanced: tuple[list[SpooledInstance], SpooledInstance],
) -> None:
    """A frame number beyond Number of Frames raises UnreadablePixels, the error the pipeline handles."""
    _, multi = single_and_enhanced
    frame = SpooledFrame(header=multi.header, path=multi.path, frame_number=MF_SLICES * MF_PHASES + 1)
    with pytest.raises(UnreadablePixels):
        read_cell(frame, Path("/"))


def test_enhanced_mr_found_from_index_rows_with_the_spool_root(tmp_path: Path) -> None:
    """The index keeps one row per multi-frame instance; stack finding reads its frames under the spool
    root."""
    spool = tmp_path / "spool"
    single = phantom_stack(tmp_path / "single", slices=3, phases=4, side=16)
    multi = enhanced_mr(single, spool / "study", positions=[(s, p) for s in range(3) for p in range(4)])
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        relative = Path(multi.path).relative_to(spool).as_posix()
        index.add_instance(multi.header, relative, Path(multi.path).stat().st_size, None, datetime.now(UTC))
        rows = index.study_instances(multi.header.study_instance_uid)
    finally:
        index.close()
    assert [(row.header.number_of_frames, row.header.image_position, row.path) for row in rows] == [
        (12, None, relative)
    ]
    plan = only_stack(find_sax_stacks(rows, root=spool))
    assert (plan.slices, plan.phases) == (3, 4)
    assert load_pixels(plan, spool).frames.shape == (12, 16, 16)
    assert find_sax_stacks(rows, root=tmp_path / "elsewhere").skipped == {"unreadable": 1}


def test_sunnybrook_as_legacy_converted_enhanced_mr_gives_the_same_volumes(
    sunnybrook: Path, tmp_path: Path, measurer: StackMeasurer
) -> None:
    """A real cine converted to one Legacy Converted Enhanced MR instance measures as its single frames do."""
    series = sunnybrook / "SCD0000301"
    files = sorted(series.glob("*.dcm"), key=lambda p: int(p.stem))
    converted = legacy_converted(files, tmp_path)
    assert (
        pydicom.dcmread(converted, stop_before_pixels=True).SOPClassUID
        == LegacyConvertedEnhancedMRImageStorage
    )
    assert parse_instance(converted.read_bytes()).number_of_frames == len(files)
    single = measure_paths(files, measurer)
    multi = measure_paths([converted], measurer)
    ((expected,), (result,)) = single.results, multi.results
    assert (result.slices, result.phases) == (expected.slices, expected.phases) == (10, 20)
    assert result.edv_ml == pytest.approx(expected.edv_ml, abs=0.1)
    assert result.esv_ml == pytest.approx(expected.esv_ml, abs=0.1)
    assert result.ef_pct == pytest.approx(expected.ef_pct, abs=0.1)
    assert (result.ed_phase, result.es_phase) == (expected.ed_phase, expected.es_phase)
    # Sunnybrook's per-instance Frame of Reference UIDs were made one for the conversion.
    assert set(expected.qc_flags) - set(result.qc_flags) <= {"inconsistent_frame_of_reference"}


def test_sunnybrook_with_a_missing_slice_keeps_its_volumes(sunnybrook: Path, measurer: StackMeasurer) -> None:
    """A mid-ventricular slice left out is flagged and its volume interpolated from its neighbours;
    counted as nothing it lost 15 % of EDV (152.9 instead of 179.0 mL)."""
    files = sorted((sunnybrook / "SCD0000101").glob("*.dcm"), key=lambda p: int(p.stem))
    gap = [path for path in files if not 101 <= int(path.stem) <= 120]  # slice 5 of 12
    ((complete,), (result,)) = measure_paths(files, measurer).results, measure_paths(gap, measurer).results
    assert (complete.slices, result.slices) == (12, 11)
    assert "missing_slices" in result.qc_flags
    assert result.edv_ml == pytest.approx(complete.edv_ml, rel=0.02)
    assert result.esv_ml == pytest.approx(complete.esv_ml, rel=0.02)
    assert result.lv_mass_g == pytest.approx(complete.lv_mass_g, rel=0.02)


def test_sunnybrook_cut_short_of_the_apex_leaves_out_the_same_basal_frames(
    sunnybrook: Path, measurer: StackMeasurer
) -> None:
    """The basal 7 of SCD0000101's 12 slices: the basal frames the whole stack leaves out (atrium, phase
    by phase) are left out here too, the stack says it misses the apex, and asks for a check. Before the
    orientation named the base, the blood pool named the mid-ventricular end as the base: nothing was
    left out."""
    files = sorted((sunnybrook / "SCD0000101").glob("*.dcm"), key=lambda p: int(p.stem))
    basal = files[: 7 * 20]  # image N is slice (N - 1) // 20, from the base (data README)
    ((whole,), (cut,)) = measure_paths(files, measurer).results, measure_paths(basal, measurer).results
    assert cut.slices == 7
    assert "basal_slices_excluded" in whole.qc_flags
    assert "basal_slices_excluded" in cut.qc_flags
    # Slices run from apex to base: the cut stack's slices are the whole stack's last 7.
    left_out = [[area == 0 for area in row] for row in cut.blood_pool_mm2]
    assert left_out == [[area == 0 for area in row] for row in whole.blood_pool_mm2[-7:]]
    assert any(left_out[-1])  # the most basal slice is left out in some phases
    assert "incomplete_coverage_apex" in cut.qc_flags  # the apex is missing, and said so
    assert cut.qc_status == "check"


def test_sunnybrook_stored_as_monochrome1_gives_the_same_volumes(
    sunnybrook: Path, tmp_path: Path, measurer: StackMeasurer
) -> None:
    """A real cine stored as MONOCHROME1 (the same picture, values turned around) measures as the
    original MONOCHROME2 does; read as stored, the model would see inverted contrast."""
    files = sorted((sunnybrook / "SCD0000301").glob("*.dcm"), key=lambda p: int(p.stem))
    copies = []
    for path in files:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        _as_monochrome1(copy)
        copies.append(copy)
    ((expected,), (result,)) = measure_paths(files, measurer).results, measure_paths(copies, measurer).results
    assert expected.edv_ml > 150
    assert (result.edv_ml, result.esv_ml, result.lv_mass_g) == pytest.approx(
        (expected.edv_ml, expected.esv_ml, expected.lv_mass_g), abs=0.01
    )
    assert (result.ed_phase, result.es_phase, result.qc_flags) == (
        expected.ed_phase,
        expected.es_phase,
        expected.qc_flags,
    )


# -- 5,000 instances -----------------------------------------------------------------------------------


def _clone(template: SpooledInstance, **header: object) -> SpooledInstance:
    uid = generate_uid()
    return SpooledInstance(
        header=dataclasses.replace(template.header, sop_instance_uid=uid, **header),  # type: ignore[arg-type]
        path=f"{uid}.dcm",
    )


def test_study_of_5000_instances_in_one_stack() -> None:
    """5,000 instances (20 slices x 250 phases) are laid out as one stack in seconds."""
    (template,) = cine_stack(study=generate_uid(), slices=1, phases=1)
    instances = [
        _clone(
            template,
            image_position=tuple(position_at(s * SPACING_MM)),
            trigger_time=round(p * RR_MS / 250, 3),
            instance_number=s * 250 + p + 1,
        )
        for s in range(20)
        for p in range(250)
    ]
    started = time.perf_counter()
    search = find_sax_stacks(instances)
    elapsed = time.perf_counter() - started
    plan = only_stack(search)
    assert (plan.slices, plan.phases, plan.flags) == (20, 250, ())
    assert_accounted(search, instances)
    assert elapsed < 30.0, f"{elapsed:.1f} s"


def test_study_of_5000_instances_in_many_series() -> None:
    """A study of 5,000 instances in 200 series (a SAX stack among long-axis cines) yields the stack."""
    study = generate_uid()
    (template,) = cine_stack(study=study, slices=1, phases=1)
    series = [generate_uid() for _ in range(200)]
    rng = np.random.default_rng(5)
    views: list[Orientation] = []
    while len(views) < 188:  # long-axis views in every direction, none parallel to the SAX stack
        row, column = rng.normal(size=3), rng.normal(size=3)
        view = orientation(row, column)
        if abs(float(np.dot(normal_of(view), normal_of(SAX)))) < math.cos(math.radians(10)):
            views.append(view)
    sax = [
        _clone(
            template,
            series_instance_uid=series[s],
            series_number=100 + s,
            image_position=tuple(position_at(s * SPACING_MM)),
            trigger_time=round(p * RR_MS / 25, 3),
            instance_number=p + 1,
        )
        for s in range(12)
        for p in range(25)
    ]
    others = [
        _clone(
            template,
            series_instance_uid=series[12 + k // 25],
            series_number=12 + k // 25,
            image_orientation=views[k // 25],
            image_position=(0.0, -60.0, 30.0),
            trigger_time=round((k % 25) * RR_MS / 25, 3),
            instance_number=k % 25 + 1,
        )
        for k in range(5000 - len(sax))
    ]
    instances = others[: len(others) // 2] + sax + others[len(others) // 2 :]
    started = time.perf_counter()
    search = find_sax_stacks(instances)
    elapsed = time.perf_counter() - started
    plan = only_stack(search)
    assert (plan.slices, plan.phases, len(plan.series_instance_uids)) == (12, 25, 12)
    assert search.skipped == {"not_sax_group": 4700}
    assert elapsed < 30.0, f"{elapsed:.1f} s"
