"""Unit tests for finding SAX cine stacks by geometry and timing (node.pipeline.stacks)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from node.dicom.instance import SpooledInstance, parse_instance
from node.pipeline.stacks import StackPlan, StackSearch, find_sax_stacks

Orientation = tuple[float, float, float, float, float, float]

SIDE = 8
RR_MS = 800.0
SPACING_MM = 8.0


def orientation(row: Sequence[float], column: Sequence[float]) -> Orientation:
    """Image Orientation (Patient) from two rough directions, orthonormalised, to 6 decimals."""
    r = np.asarray(row, dtype=float)
    r /= np.linalg.norm(r)
    c = np.asarray(column, dtype=float)
    c -= np.dot(c, r) * r
    c /= np.linalg.norm(c)
    values = [round(float(v), 6) for v in (*r, *c)]
    return (values[0], values[1], values[2], values[3], values[4], values[5])


def normal_of(iop: Orientation) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    return np.asarray(n / np.linalg.norm(n))


SAX = orientation((0.71, 0.70, -0.03), (-0.31, 0.27, -0.91))
SAX_TILTED = orientation((0.2, 0.9, -0.3), (0.5, -0.4, -0.7))
FOUR_CHAMBER = orientation((0.6, -0.5, 0.6), (0.3, 0.8, 0.4))
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


ORIGIN = (12.5, -80.0, 45.0)


def position_at(offset_mm: float, iop: Orientation = SAX, origin: Sequence[float] = ORIGIN) -> list[float]:
    """Image Position (Patient) ``offset_mm`` along the plane normal from ``origin``."""
    return [float(v) for v in np.asarray(origin, dtype=float) + offset_mm * normal_of(iop)]


def encode(dataset: Dataset, directory: Path | None = None) -> SpooledInstance:
    """Write a dataset as Part 10 bytes and parse it the way the node does.

    The transfer syntax is the dataset's own (a compressed one, say) or else Explicit VR Little
    Endian. With a ``directory`` the file is also written there and the instance's path is that file's
    (absolute) path; without one the path names a file that does not exist.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    previous = getattr(dataset, "file_meta", None)
    meta.TransferSyntaxUID = (previous or {}).get("TransferSyntaxUID", ExplicitVRLittleEndian)
    dataset.file_meta = meta
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    path = f"{dataset.SOPInstanceUID}.dcm"
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(data)
        path = str(directory / path)
    return SpooledInstance(header=parse_instance(data), path=path)


def mr_image(
    *,
    study: str,
    series: str,
    frame: str | None,
    iop: Sequence[float],
    position: Sequence[float],
    trigger_time: float | None,
    instance_number: int,
    series_number: int = 10,
    acquisition_time: str = "101500",
    acquisition_date: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "NONE"),
    sop_class: str = MRImageStorage,
    rows: int = SIDE,
    columns: int = SIDE,
    pixel_spacing: Sequence[float] = (1.5, 1.5),
    pixels: np.ndarray | None = None,
    directory: Path | None = None,
) -> SpooledInstance:
    """One tiny MR image with the attributes stack finding reads (zero pixels unless ``pixels``)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    if frame is not None:
        ds.FrameOfReferenceUID = frame
    ds.Modality = "MR"
    ds.ImageType = list(image_type)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.AcquisitionTime = acquisition_time
    if acquisition_date is not None:
        ds.AcquisitionDate = acquisition_date
    if trigger_time is not None:
        ds.TriggerTime = round(trigger_time, 3)
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = list(pixel_spacing)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    image = np.zeros((rows, columns), dtype=np.uint16) if pixels is None else pixels
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint16).tobytes()
    return encode(ds, directory)


def cine_stack(
    *,
    study: str,
    frame: str | None = "1.2.3.4",
    iop: Orientation = SAX,
    slices: int = 5,
    phases: int = 4,
    offsets_mm: Sequence[float] | None = None,
    series_per_slice: bool = False,
    series_number: int = 10,
    acquisition_time: str = "101500",
    acquisition_date: str | None = None,
    origin: Sequence[float] = ORIGIN,
    with_trigger_time: bool = True,
    drop: frozenset[tuple[int, int]] = frozenset(),
    rows: int = SIDE,
    columns: int = SIDE,
    pixel_spacing: Callable[[int, int], Sequence[float]] | Sequence[float] = (1.5, 1.5),
    pixels: Callable[[int, int], np.ndarray] | None = None,
    directory: Path | None = None,
) -> list[SpooledInstance]:
    """A cine stack along the plane normal, in slice-then-phase order, one series or one per slice.

    ``pixel_spacing`` and ``pixels`` may be functions of (slice, phase); with a ``directory`` every
    image is also written there as a file (see :func:`encode`).
    """
    offsets = list(offsets_mm) if offsets_mm is not None else [k * SPACING_MM for k in range(slices)]
    shared_series = generate_uid()
    images: list[SpooledInstance] = []
    for s, offset in enumerate(offsets):
        series = generate_uid() if series_per_slice else shared_series
        for p in range(phases):
            if (s, p) in drop:
                continue
            images.append(
                mr_image(
                    study=study,
                    series=series,
                    frame=frame,
                    iop=iop,
                    position=position_at(offset, iop, origin),
                    trigger_time=p * RR_MS / phases if with_trigger_time else None,
                    instance_number=s * phases + p + 1,
                    series_number=series_number + s if series_per_slice else series_number,
                    acquisition_time=acquisition_time,
                    acquisition_date=acquisition_date,
                    rows=rows,
                    columns=columns,
                    pixel_spacing=pixel_spacing(s, p) if callable(pixel_spacing) else pixel_spacing,
                    pixels=pixels(s, p) if pixels is not None else None,
                    directory=directory,
                )
            )
    return images


def one_position(
    study: str, series: str, offset_mm: float, trigger_times: Sequence[float], **image: object
) -> list[SpooledInstance]:
    """A single-position series ``offset_mm`` along SAX's normal, one image per trigger time.

    ``image`` overrides :func:`mr_image`'s other arguments (``iop`` and ``position`` included).
    """
    options: dict[str, object] = {"iop": SAX, "position": position_at(offset_mm), **image}
    return [
        mr_image(
            study=study, series=series, frame="1.2.3.4", trigger_time=t, instance_number=k + 1, **options
        )
        for k, t in enumerate(trigger_times)
    ]


def long_axis_cine(study: str, frame: str = "1.2.3.4", phases: int = 20) -> list[SpooledInstance]:
    """A single-position 4-chamber cine."""
    series = generate_uid()
    return [
        mr_image(
            study=study,
            series=series,
            frame=frame,
            iop=FOUR_CHAMBER,
            position=(0.0, -60.0, 30.0),
            trigger_time=p * RR_MS / phases,
            instance_number=p + 1,
            series_number=3,
        )
        for p in range(phases)
    ]


def localizer(study: str, frame: str = "1.2.3.4", *, typed: bool = True) -> list[SpooledInstance]:
    """A three-plane localizer, with LOCALIZER in Image Type or (typed=False) without."""
    series = generate_uid()
    image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER") if typed else ("ORIGINAL", "PRIMARY", "M")
    return [
        mr_image(
            study=study,
            series=series,
            frame=frame,
            iop=iop,
            position=(-100.0, -100.0, 0.0),
            trigger_time=None,
            instance_number=n + 1,
            series_number=1,
            image_type=image_type,
        )
        for n, iop in enumerate((AXIAL, CORONAL, SAGITTAL))
    ]


def cells(plan: StackPlan) -> list[SpooledInstance]:
    return [cell for row in plan.grid for cell in row if cell is not None]


def assert_accounted(search: StackSearch, instances: Sequence[SpooledInstance], frames: int = 0) -> None:
    """Every input image is either in exactly one grid cell or counted under a skip reason.

    ``frames``: how many more images than instances the input holds (the frames of multi-frame
    instances beyond their first).
    """
    placed = [
        (cell.header.sop_instance_uid, getattr(cell, "frame_number", None))
        for plan in search.stacks
        for cell in cells(plan)
    ]
    assert len(placed) == len(set(placed))
    assert len(placed) + sum(search.skipped.values()) == len(instances) + frames


def only_stack(search: StackSearch) -> StackPlan:
    assert len(search.stacks) == 1
    return search.stacks[0]


def test_oblique_stack_in_one_series() -> None:
    """An oblique parallel cine stack in one series becomes one plan with ordered slices and phases."""
    study = generate_uid()
    instances = cine_stack(study=study)
    search = find_sax_stacks(instances)
    plan = only_stack(search)
    assert (plan.slices, plan.phases) == (5, 4)
    assert plan.study_instance_uid == study
    assert plan.frame_of_reference_uid == "1.2.3.4"
    assert plan.orientation == SAX
    assert np.allclose(plan.normal, normal_of(SAX), atol=1e-9)
    assert np.allclose(np.diff(plan.slice_positions_mm), SPACING_MM, atol=1e-3)
    assert plan.slice_spacing_mm == pytest.approx(SPACING_MM, abs=1e-3)
    assert plan.pixel_spacing == (1.5, 1.5)
    assert (plan.rows, plan.columns) == (SIDE, SIDE)
    assert plan.trigger_times_ms == pytest.approx([0.0, 200.0, 400.0, 600.0])
    assert len(plan.series_instance_uids) == 1
    assert plan.flags == ()
    assert search.skipped == {}
    for s, row in enumerate(plan.grid):
        assert [cell.header.instance_number for cell in row if cell] == [s * 4 + p + 1 for p in range(4)]
    assert_accounted(search, instances)


def test_series_per_slice_is_grouped_across_series() -> None:
    """One series per slice position (Siemens/Kaggle style) is grouped into one stack."""
    instances = cine_stack(study=generate_uid(), series_per_slice=True)
    plan = only_stack(find_sax_stacks(instances))
    assert (plan.slices, plan.phases) == (5, 4)
    assert len(plan.series_instance_uids) == 5
    assert list(plan.series_instance_uids) == sorted(plan.series_instance_uids)
    assert [row[0].header.series_instance_uid for row in plan.grid if row[0]] == [
        instances[s * 4].header.series_instance_uid for s in range(5)
    ]
    assert plan.flags == ()


def test_shuffled_arrival_gives_the_same_grid() -> None:
    """The grid depends on geometry and timing only, not on arrival order."""
    instances = cine_stack(study=generate_uid(), series_per_slice=True)
    shuffled = list(instances)
    random.Random(7).shuffle(shuffled)
    ordered = only_stack(find_sax_stacks(instances))
    mixed = only_stack(find_sax_stacks(shuffled))
    assert mixed.grid == ordered.grid
    assert mixed.slice_positions_mm == ordered.slice_positions_mm


def test_localizer_and_four_chamber_view_are_skipped() -> None:
    """A localizer and a single-position 4-chamber cine in the study are skipped; the SAX stack is found."""
    study = generate_uid()
    instances = localizer(study) + long_axis_cine(study) + cine_stack(study=study)
    search = find_sax_stacks(instances)
    plan = only_stack(search)
    assert (plan.slices, plan.phases) == (5, 4)
    assert search.skipped == {"localizer": 3, "not_sax_group": 20}
    assert_accounted(search, instances)


@pytest.mark.parametrize(
    ("stack_at", "repeat_at", "repeat_series_number", "repeat_wins"),
    [
        (("101500", None), ("103000", None), 5, True),  # later Acquisition Time beats a lower Series Number
        (("101500", None), ("101500", None), 20, True),  # same time: the higher Series Number wins
        (
            ("101500", None),
            ("100000", None),
            20,
            False,
        ),  # an earlier acquisition does not replace a later one
        # Repeated after midnight: the next day's 00:05 is later than 23:55 ...
        (("235500", "20261122"), ("000500", "20261123"), 5, True),
        (("235500", "20261122"), ("000500", "20261122"), 5, False),  # ... but not the same day's
        # An invalid date (the 00 day) is not trusted: without a date on every image, the time decides.
        (("235500", "20261100"), ("000500", "20261123"), 5, False),
    ],
)
def test_repeated_slice_position_keeps_later_acquisition(
    stack_at: tuple[str, str | None],
    repeat_at: tuple[str, str | None],
    repeat_series_number: int,
    repeat_wins: bool,
) -> None:
    """A position acquired twice keeps the later acquisition: by Acquisition Date and Time where every
    image has a valid date, else by Acquisition Time; then by Series Number."""
    study = generate_uid()
    stack = cine_stack(
        study=study, series_number=10, acquisition_time=stack_at[0], acquisition_date=stack_at[1]
    )
    repeat_series = generate_uid()
    repeat = one_position(
        study,
        repeat_series,
        2 * SPACING_MM,
        [p * 200.0 for p in range(4)],
        series_number=repeat_series_number,
        acquisition_time=repeat_at[0],
        acquisition_date=repeat_at[1],
    )
    instances = repeat + stack  # the repeat arrives first, so arrival order cannot decide
    search = find_sax_stacks(instances)
    plan = only_stack(search)
    assert (plan.slices, plan.phases) == (5, 4)
    assert "duplicate_positions_replaced" in plan.flags
    middle = {cell.header.series_instance_uid for cell in plan.grid[2] if cell}
    assert middle == ({repeat_series} if repeat_wins else {stack[0].header.series_instance_uid})
    assert search.skipped == {"superseded_by_later_acquisition": 4}
    assert_accounted(search, instances)


def test_later_series_with_other_phase_count_does_not_replace_a_cine_slice() -> None:
    """A later single-position series with 30 times (a TI scout planned on the mid slice, say) does not
    replace that slice of a 20-phase cine, nor set the stack's phase axis."""
    study = generate_uid()
    stack = cine_stack(study=study, phases=20, series_number=10)
    scout_series = generate_uid()
    scout = one_position(
        study,
        scout_series,
        2 * SPACING_MM,
        [100.0 + 20.0 * k for k in range(30)],
        series_number=40,
        acquisition_time="104500",
    )
    instances = stack + scout
    search = find_sax_stacks(instances)
    plan = only_stack(search)
    assert (plan.slices, plan.phases) == (5, 20)
    assert scout_series not in plan.series_instance_uids
    assert plan.trigger_times_ms == tuple(p * RR_MS / 20 for p in range(20))
    assert search.skipped == {"superseded_by_later_acquisition": 30}
    assert_accounted(search, instances)


def test_slightly_tilted_repeat_of_a_slice_replaces_it_by_its_centre() -> None:
    """A slice re-acquired 3 degrees off, about its own centre, replaces that slice: positions along
    the normal are the images' centres, so a 384 mm field of view does not move it by 10 mm."""
    study = generate_uid()
    side, pixel_mm, tilt = 256, 1.5, math.radians(3.0)
    stack = cine_stack(study=study, rows=side, columns=side, pixel_spacing=(pixel_mm, pixel_mm))
    row, column, normal = np.asarray(SAX[:3]), np.asarray(SAX[3:]), normal_of(SAX)
    half = (side - 1) / 2 * pixel_mm
    centre = np.asarray(position_at(2 * SPACING_MM)) + half * row + half * column
    tilted_row = math.cos(tilt) * row + math.sin(tilt) * normal
    tilted = orientation(tilted_row, column)
    corner = centre - half * np.asarray(tilted[:3]) - half * np.asarray(tilted[3:])
    repeat_series = generate_uid()
    repeat = one_position(
        study,
        repeat_series,
        2 * SPACING_MM,
        [p * 200.0 for p in range(4)],
        iop=tilted,
        position=corner,
        series_number=20,
        rows=side,
        columns=side,
        pixel_spacing=(pixel_mm, pixel_mm),
    )
    instances = stack + repeat
    search = find_sax_stacks(instances)
    plan = only_stack(search)
    assert (plan.slices, plan.phases) == (5, 4)
    assert {cell.header.series_instance_uid for cell in plan.grid[2] if cell} == {repeat_series}
    assert np.allclose(np.diff(plan.slice_positions_mm), SPACING_MM, atol=0.5)
    assert plan.flags == ("duplicate_positions_replaced",)
    assert search.skipped == {"superseded_by_later_acquisition": 4}
    assert_accounted(search, instances)


def test_missing_phase_leaves_a_none_cell() -> None:
    """A slice missing one phase keeps the stack, with a None cell at that phase and a flag."""
    instances = cine_stack(study=generate_uid(), drop=frozenset({(1, 2)}))
    plan = only_stack(find_sax_stacks(instances))
    assert (plan.slices, plan.phases) == (5, 4)
    assert plan.grid[1][2] is None
    assert [cell.header.trigger_time if cell else None for cell in plan.grid[1]] == [0.0, 200.0, None, 600.0]
    assert plan.flags == ("missing_phases",)
    assert plan.trigger_times_ms == pytest.approx([0.0, 200.0, 400.0, 600.0])


def test_missing_first_phase_aligns_by_trigger_time() -> None:
    """A slice missing its first phase is aligned by nearest trigger time, not shifted to the front."""
    instances = cine_stack(study=generate_uid(), drop=frozenset({(3, 0)}))
    plan = only_stack(find_sax_stacks(instances))
    assert plan.grid[3][0] is None
    assert [cell.header.trigger_time for cell in plan.grid[3][1:] if cell] == [200.0, 400.0, 600.0]


def test_missing_slice_is_flagged() -> None:
    """A gap of twice the median spacing is flagged as missing slices and does not change the spacing."""
    offsets = [k * SPACING_MM for k in range(6) if k != 3]
    plan = only_stack(find_sax_stacks(cine_stack(study=generate_uid(), offsets_mm=offsets)))
    assert plan.slices == 5
    assert plan.slice_spacing_mm == pytest.approx(SPACING_MM, abs=1e-3)
    assert plan.flags == ("missing_slices",)
    # The two slices beside the gap each stand for half the missing slice in volumes.
    assert plan.slice_extents_mm == pytest.approx([8.0, 8.0, 12.0, 12.0, 8.0], abs=1e-3)


def test_irregular_spacing_is_flagged() -> None:
    """Spacing that varies without a whole missing slice is flagged as irregular."""
    instances = cine_stack(study=generate_uid(), offsets_mm=[0.0, 8.0, 17.0, 24.0, 32.0])
    plan = only_stack(find_sax_stacks(instances))
    assert plan.slice_spacing_mm == pytest.approx(8.0, abs=1e-3)
    assert plan.flags == ("irregular_slice_spacing",)
    assert plan.slice_extents_mm == pytest.approx([8.0] * 5, abs=1e-3), "no slice is missing"


def test_study_without_sax_returns_no_stack() -> None:
    """A study with only long-axis cines, an untyped localizer and a two-slice stack yields no stack."""
    study = generate_uid()
    instances = (
        long_axis_cine(study)
        + localizer(study, typed=False)
        + cine_stack(study=study, iop=SAX_TILTED, slices=2, phases=10)
    )
    search = find_sax_stacks(instances)
    assert search.stacks == ()
    assert search.skipped == {"not_sax_group": len(instances)}


@pytest.mark.parametrize("difference", ["orientation", "frame_of_reference"])
def test_two_sax_stacks_in_one_study_are_both_found(difference: str) -> None:
    """Two stacks differing in orientation or in frame of reference are returned as two plans."""
    study = generate_uid()
    first = cine_stack(study=study, frame="1.2.3.4")
    if difference == "orientation":
        second = cine_stack(study=study, frame="1.2.3.4", iop=SAX_TILTED, slices=4, phases=6)
    else:
        second = cine_stack(study=study, frame="1.2.3.5", slices=4, phases=6)
    search = find_sax_stacks(first + second)
    assert sorted((plan.slices, plan.phases) for plan in search.stacks) == [(4, 6), (5, 4)]
    assert {plan.series_instance_uids for plan in search.stacks} == {
        (first[0].header.series_instance_uid,),
        (second[0].header.series_instance_uid,),
    }
    assert all(plan.flags == () for plan in search.stacks)


@pytest.mark.parametrize(
    "image_type",
    [("DERIVED", "SECONDARY"), ("DERIVED",)],  # one value (below PS3.3's two, but seen) is one word
)
def test_derived_image_and_sr_are_skipped(image_type: tuple[str, ...]) -> None:
    """A DERIVED image in the stack's plane and an SR document are skipped with their reasons."""
    study = generate_uid()
    stack = cine_stack(study=study)
    derived = mr_image(
        study=study,
        series=generate_uid(),
        frame="1.2.3.4",
        iop=SAX,
        position=ORIGIN,
        trigger_time=0.0,
        instance_number=1,
        image_type=image_type,
    )
    sr = Dataset()
    sr.SOPClassUID = BasicTextSRStorage
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID = study
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    instances = [*stack, derived, encode(sr)]
    search = find_sax_stacks(instances)
    assert only_stack(search).slices == 5
    assert search.skipped == {"derived": 1, "not_an_image": 1}
    assert_accounted(search, instances)


def test_multi_frame_and_other_image_classes_are_skipped() -> None:
    """Enhanced MR Color is skipped as unsupported, an Enhanced MR without its file as unreadable, and a
    secondary capture as not an MR image."""
    study = generate_uid()
    others = [
        mr_image(
            study=study,
            series=generate_uid(),
            frame="1.2.3.4",
            iop=SAX,
            position=(0.0, 0.0, 0.0),
            trigger_time=0.0,
            instance_number=1,
            sop_class=sop_class,
        )
        for sop_class in (EnhancedMRColorImageStorage, EnhancedMRImageStorage, SecondaryCaptureImageStorage)
    ]
    search = find_sax_stacks([*others, *cine_stack(study=study)])
    assert only_stack(search).slices == 5
    assert search.skipped == {"multi_frame_unsupported": 1, "not_mr_image": 1, "unreadable": 1}


def test_single_phase_series_in_the_same_plane_is_not_mixed_in() -> None:
    """A single-phase series planned like the cine (late enhancement) is skipped as not cine."""
    study = generate_uid()
    stack = cine_stack(study=study)
    series = generate_uid()
    late = [
        mr_image(
            study=study,
            series=series,
            frame="1.2.3.4",
            iop=SAX,
            position=position_at(k * SPACING_MM + SPACING_MM / 2),
            trigger_time=450.0,
            instance_number=k + 1,
            series_number=40,
            acquisition_time="113000",
        )
        for k in range(5)
    ]
    search = find_sax_stacks(stack + late)
    plan = only_stack(search)
    assert (plan.slices, plan.phases, plan.flags) == (5, 4, ())
    assert search.skipped == {"not_cine": 5}


def test_inconsistent_geometry_is_dropped_and_flagged() -> None:
    """An image whose matrix disagrees with the stack's majority is dropped and flagged."""
    study = generate_uid()
    stack = cine_stack(study=study, drop=frozenset({(1, 1)}))
    odd = mr_image(
        study=study,
        series=stack[0].header.series_instance_uid,
        frame="1.2.3.4",
        iop=SAX,
        position=position_at(SPACING_MM),
        trigger_time=200.0,
        instance_number=6,
        rows=2 * SIDE,
        columns=2 * SIDE,
    )
    search = find_sax_stacks([*stack, odd])
    plan = only_stack(search)
    assert plan.grid[1][1] is None
    assert (plan.rows, plan.columns) == (SIDE, SIDE)
    assert plan.flags == ("missing_phases", "inconsistent_geometry")
    assert search.skipped == {"inconsistent_geometry": 1}


def test_phases_fall_back_to_instance_number_without_trigger_time() -> None:
    """Without TriggerTime, phases are ordered by InstanceNumber and their trigger times are unknown."""
    instances = cine_stack(study=generate_uid(), phases=3, with_trigger_time=False)
    random.Random(3).shuffle(instances)
    plan = only_stack(find_sax_stacks(instances))
    assert plan.trigger_times_ms == (None, None, None)
    for s, row in enumerate(plan.grid):
        assert [cell.header.instance_number for cell in row if cell] == [s * 3 + 1, s * 3 + 2, s * 3 + 3]


def test_ed_es_only_stack_is_found() -> None:
    """A stack with two trigger times per position (ED and ES only) is still a stack."""
    plan = only_stack(find_sax_stacks(cine_stack(study=generate_uid(), phases=2)))
    assert (plan.slices, plan.phases) == (5, 2)


def test_frame_of_reference_differing_per_instance_is_tolerated() -> None:
    """A series whose instances each carry their own FrameOfReferenceUID is still one stack, flagged."""
    instances = cine_stack(study=generate_uid())
    broken = [
        dataclasses.replace(i, header=dataclasses.replace(i.header, frame_of_reference_uid=generate_uid()))
        for i in instances
    ]
    plan = only_stack(find_sax_stacks(broken))
    assert (plan.slices, plan.phases) == (5, 4)
    assert plan.frame_of_reference_uid is None
    assert plan.flags == ("inconsistent_frame_of_reference",)


def test_odd_input_never_raises() -> None:
    """Empty input, degenerate orientations and non-finite positions are skipped, never raised."""
    assert find_sax_stacks([]) == StackSearch(stacks=(), skipped={})
    study = generate_uid()
    template = cine_stack(study=study, slices=1, phases=3)
    changes: list[dict[str, object]] = [
        {"image_orientation": (0.0,) * 6},
        {"image_position": (math.nan,) * 3},
        {"image_position": None},
    ]
    odd = [
        dataclasses.replace(instance, header=dataclasses.replace(instance.header, **change))  # type: ignore[arg-type]
        for instance, change in zip(template, changes, strict=True)
    ]
    search = find_sax_stacks(odd)
    assert search.stacks == ()
    assert search.skipped == {"no_geometry": 3}


def test_resent_instance_is_counted_once() -> None:
    """The same SOP Instance twice in the input fills one cell; the earlier copy is counted as a duplicate."""
    instances = cine_stack(study=generate_uid())
    search = find_sax_stacks([instances[0], *instances])
    assert only_stack(search).grid[0][0] == instances[0]
    assert search.skipped == {"duplicate_instance": 1}


def test_stack_plan_rejects_a_ragged_grid() -> None:
    """A StackPlan whose grid does not match its slice and phase axes cannot be built."""
    plan = only_stack(find_sax_stacks(cine_stack(study=generate_uid())))
    with pytest.raises(ValueError, match="per phase"):
        dataclasses.replace(plan, trigger_times_ms=plan.trigger_times_ms[:-1])


SUNNYBROOK = {"SCD0000101": (12, 20, 10.0), "SCD0000201": (13, 20, 10.0), "SCD0000301": (10, 20, 8.0)}


@pytest.mark.data
def test_sunnybrook_series_each_form_one_stack(sunnybrook: Path) -> None:
    """Each Sunnybrook GE cine series (invalid UIDs and dates) is one stack of the documented size."""
    instances = [
        SpooledInstance(header=parse_instance(path.read_bytes()), path=str(path))
        for patient in sorted(SUNNYBROOK)
        for path in sorted((sunnybrook / patient).glob("*.dcm"))
    ]
    search = find_sax_stacks(instances)
    assert search.skipped == {}
    assert len(search.stacks) == len(SUNNYBROOK)
    for plan in search.stacks:
        patient = Path(cells(plan)[0].path).parent.name
        slices, phases, spacing = SUNNYBROOK[patient]
        assert (plan.slices, plan.phases) == (slices, phases)
        assert plan.slice_spacing_mm == pytest.approx(spacing, abs=0.05)
        assert len(plan.series_instance_uids) == 1
        assert set(plan.flags) <= {"inconsistent_frame_of_reference"}
        # Image N is slice (N - 1) // 20, phase (N - 1) % 20: every row is one slice in phase order.
        for row in plan.grid:
            numbers = [cell.header.instance_number or 0 for cell in row if cell]
            assert len(numbers) == phases
            assert numbers == list(range(numbers[0], numbers[0] + phases))
            assert (numbers[0] - 1) % phases == 0
