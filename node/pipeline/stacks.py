"""Find short-axis (SAX) cine stacks among a study's instances and lay each out as a slice x phase grid.

Selection is by geometry and timing, never by SeriesDescription: a SAX cine stack is a set of MR
images whose planes are parallel (Image Orientation (Patient) (0020,0037) within
:data:`PARALLEL_TOLERANCE_DEG`), at :data:`MIN_SLICES` or more distinct positions along the plane
normal (Image Position (Patient) (0020,0032), PS3.3 C.7.6.2.1.1), each with :data:`MIN_PHASES` or
more Trigger Times (0018,1060). A stack may arrive as one series or as one series per slice, so
images are grouped across series by study, Frame of Reference UID (0020,0052) and orientation.

An image is a single-frame MR image or one frame of an Enhanced or Legacy Converted Enhanced MR
instance: such an instance is split into frames (:mod:`node.images.frames`), each with the position,
orientation, pixel spacing and trigger time of its functional groups, and a frame fills a grid cell
exactly as a single-frame image would. The cell is then a :class:`~node.images.frames.SpooledFrame`.

Odd input is reported, never raised: every image that does not end up in a grid cell is counted
under a :class:`SkipReason`, and every irregularity of a stack that was kept is named by a
:class:`~node.inference.qc.QcFlag`.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

from pydicom.uid import EnhancedMRColorImageStorage, MRImageStorage

from node.dicom.dates import TM_DIGITS, datetime_of, seconds_of_day, time_of
from node.dicom.instance import SpooledInstance
from node.images.frames import SPLIT_MR_CLASSES, FrameProblem, SpooledFrame, split_frames
from node.inference.qc import QcFlag

Vector = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]
#: A hashable, orderable key (orientations, matrix geometries).
_K = TypeVar("_K", bound=tuple[object, ...])

#: Planes whose normals (sign-agnostic) and row directions differ by at most this are parallel.
PARALLEL_TOLERANCE_DEG: Final = 5.0
#: Images whose positions along the slice normal differ by at most this are one slice position.
POSITION_TOLERANCE_MM: Final = 0.5
#: Trigger Times (0018,1060) closer than this are one cardiac phase.
TRIGGER_TIME_TOLERANCE_MS: Final = 0.5
#: Pixel Spacing (0028,0030) values closer than this agree.
PIXEL_SPACING_TOLERANCE_MM: Final = 1e-3
#: A stack needs at least this many slice positions with a cine at each.
MIN_SLICES: Final = 3
#: A cine needs at least this many trigger times at one position (ED/ES-only stacks have two).
MIN_PHASES: Final = 2
#: A gap between neighbouring slices at least this many times the median spacing means missing slices.
MISSING_SLICE_RATIO: Final = 1.75
#: Spacings differing from the median by more than this fraction of it make the spacing irregular.
IRREGULAR_SPACING_FRACTION: Final = 0.1
#: Row and column direction cosines whose length differs from 1 by more than this are unusable.
UNIT_LENGTH_TOLERANCE: Final = 0.05
#: Row and column direction cosines whose dot product exceeds this are not orthogonal.
ORTHOGONALITY_TOLERANCE: Final = 0.05

_PARALLEL_COSINE: Final = math.cos(math.radians(PARALLEL_TOLERANCE_DEG))
_SECONDS_PER_DAY: Final = 86400
#: Multi-frame MR classes that are not split into frames (colour, not the magnitude the model reads).
_UNSPLIT_MULTI_FRAME_MR_CLASSES: Final = frozenset({str(EnhancedMRColorImageStorage)})
_DERIVED: Final = "DERIVED"
_LOCALIZER: Final = "LOCALIZER"


class SkipReason(StrEnum):
    """Why an image is in no grid cell; the keys of :attr:`StackSearch.skipped`.

    Each frame of a multi-frame instance counts as one image; an instance that cannot be split into
    frames, or is not split (see :data:`MULTI_FRAME_UNSUPPORTED`), counts once.
    """

    #: The same SOP Instance UID appeared again later in the input; the later copy was used.
    DUPLICATE_INSTANCE = "duplicate_instance"
    #: Not an image: a non-MR SOP Class without Rows (SR, presentation state, key object ...).
    NOT_AN_IMAGE = "not_an_image"
    #: An image, but not of MR Image Storage (CT, secondary capture ...), PS3.4 B.5.
    NOT_MR_IMAGE = "not_mr_image"
    #: Enhanced MR Color (PS3.3 A.36.4), or MR Image Storage with Number of Frames > 1, which its IOD
    #: does not allow; Enhanced and Legacy Converted Enhanced MR are split into frames instead.
    MULTI_FRAME_UNSUPPORTED = "multi_frame_unsupported"
    #: An Enhanced or Legacy Converted Enhanced MR instance whose file could not be read for its
    #: per-frame functional groups.
    UNREADABLE = "unreadable"
    #: Image Type (0008,0008) value 1 is DERIVED (PS3.3 C.7.6.1.1.2).
    DERIVED = "derived"
    #: Image Type (0008,0008) contains LOCALIZER.
    LOCALIZER = "localizer"
    #: Rows, Columns, Pixel Spacing, Image Position or Image Orientation (Patient) absent or unusable;
    #: or a multi-frame instance whose Per-Frame Functional Groups do not match its Number of Frames.
    NO_GEOMETRY = "no_geometry"
    #: In a stack's plane, but its series has fewer than :data:`MIN_PHASES` trigger times at every
    #: position (a late-enhancement or other single-phase series planned like the cine).
    NOT_CINE = "not_cine"
    #: Rows, Columns or Pixel Spacing disagree with the stack's majority.
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"
    #: Superseded by a later acquisition of the same position (and phase), or by one with the stack's
    #: usual number of phases where this one has another number.
    SUPERSEDED = "superseded_by_later_acquisition"
    #: In a group of parallel images that is not a SAX cine stack: fewer than :data:`MIN_SLICES`
    #: positions with a cine (a long-axis view, a single-slice series, an untyped localizer ...).
    NOT_SAX_GROUP = "not_sax_group"


@dataclass(frozen=True)
class StackPlan:
    """One SAX cine stack: which instance fills each slice x phase cell, and the stack's geometry.

    Attributes
    ----------
    study_instance_uid
        Study Instance UID (0020,000D) of every instance in the grid.
    frame_of_reference_uid
        Frame of Reference UID (0020,0052) shared by the grid; None where the instances lack it, or
        where a series' instances disagree on it (then flagged ``inconsistent_frame_of_reference``).
    series_instance_uids
        Series Instance UIDs (0020,000E) contributing to the grid, sorted.
    orientation
        Image Orientation (Patient) (0020,0037) of the stack: the most common among its instances.
    normal
        Unit slice normal, row direction x column direction of :attr:`orientation`.
    slice_positions_mm
        The images' centres (from Image Position (Patient) (0020,0032), Pixel Spacing and the matrix)
        projected on :attr:`normal`, one per slice, ascending. For planes exactly parallel to the
        stack's this is Image Position (Patient) projected on the normal.
    slice_spacing_mm
        Median distance between neighbouring slice positions; not Slice Thickness (0018,0050).
    pixel_spacing
        Pixel Spacing (0028,0030): (row spacing, column spacing) in mm.
    rows, columns
        Rows (0028,0010) and Columns (0028,0011) of every image in the grid.
    trigger_times_ms
        Per phase index, the median Trigger Time (0018,1060) over slices; None when unknown.
    grid
        ``grid[slice][phase]``; None where that slice lacks that phase. A cell filled by a frame of a
        multi-frame instance is a :class:`~node.images.frames.SpooledFrame`.
    flags
        :class:`~node.inference.qc.QcFlag` values naming the irregularities found, in declaration order.
    """

    study_instance_uid: str
    frame_of_reference_uid: str | None
    series_instance_uids: tuple[str, ...]
    orientation: Orientation
    normal: Vector
    slice_positions_mm: tuple[float, ...]
    slice_spacing_mm: float
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    trigger_times_ms: tuple[float | None, ...]
    grid: tuple[tuple[SpooledInstance | None, ...], ...]
    flags: tuple[QcFlag, ...]

    def __post_init__(self) -> None:
        if len(self.grid) != len(self.slice_positions_mm):
            raise ValueError("grid and slice_positions_mm differ in number of slices")
        if any(len(row) != len(self.trigger_times_ms) for row in self.grid):
            raise ValueError("every grid row needs one cell per phase of trigger_times_ms")

    @property
    def slices(self) -> int:
        """Number of slice positions."""
        return len(self.grid)

    @property
    def slice_extents_mm(self) -> tuple[float, ...]:
        """Per slice, the length along the normal it stands for in a volume.

        The slice spacing; where a gap to a neighbour is flagged ``missing_slices``, each of the two
        slices also stands for half of what the gap has beyond one spacing. The missing slices then
        count with areas interpolated linearly between their neighbours, rather than as nothing.
        """
        spacing = self.slice_spacing_mm
        extents = [spacing] * self.slices
        for index, (low, high) in enumerate(itertools.pairwise(self.slice_positions_mm)):
            if _holds_missing_slices(high - low, spacing):
                extents[index] += (high - low - spacing) / 2
                extents[index + 1] += (high - low - spacing) / 2
        return tuple(extents)

    @property
    def phases(self) -> int:
        """Number of phase indices (the longest slice's cine)."""
        return len(self.trigger_times_ms)


@dataclass(frozen=True)
class StackSearch:
    """Every SAX cine stack found, and how many instances were left out, by :class:`SkipReason`."""

    stacks: tuple[StackPlan, ...]
    skipped: dict[str, int]


@dataclass(frozen=True)
class _Image:
    """An image (a single-frame instance or a frame) that passed the per-image checks, geometry decoded."""

    instance: SpooledInstance
    arrival: int
    orientation: Orientation
    position: Vector
    row: Vector
    normal: Vector
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int

    @property
    def centre(self) -> Vector:
        """Patient coordinates (mm) of the image's centre.

        Image Position (Patient) is the centre of the first transmitted pixel (PS3.3 C.7.6.2.1.1), a
        corner of the image. Projected on the normal of another plane, a corner moves by half the
        field of view times the sine of the angle between the planes (13 mm for 300 mm at 5 degrees,
        the tilt :data:`PARALLEL_TOLERANCE_DEG` allows), the centre does not.
        """
        column = _cross(self.normal, self.row)
        along_row = (self.columns - 1) / 2 * self.pixel_spacing[1]
        along_column = (self.rows - 1) / 2 * self.pixel_spacing[0]
        return (
            self.position[0] + along_row * self.row[0] + along_column * column[0],
            self.position[1] + along_row * self.row[1] + along_column * column[1],
            self.position[2] + along_row * self.row[2] + along_column * column[2],
        )

    @property
    def trigger_time(self) -> float | None:
        """Trigger Time (0018,1060) in ms; None when absent or not a finite number."""
        value = self.instance.header.trigger_time
        return value if value is not None and math.isfinite(value) else None


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vector, b: Vector) -> Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(a: Vector) -> Vector:
    length = math.sqrt(_dot(a, a))
    return (a[0] / length, a[1] / length, a[2] / length)


def _axes(orientation: Orientation) -> tuple[Vector, Vector] | None:
    """Unit row direction and unit normal of an Image Orientation (Patient), None when unusable."""
    if not all(math.isfinite(value) for value in orientation):
        return None
    row: Vector = (orientation[0], orientation[1], orientation[2])
    column: Vector = (orientation[3], orientation[4], orientation[5])
    for vector in (row, column):
        if abs(math.sqrt(_dot(vector, vector)) - 1.0) > UNIT_LENGTH_TOLERANCE:
            return None
    row, column = _unit(row), _unit(column)
    if abs(_dot(row, column)) > ORTHOGONALITY_TOLERANCE:
        return None
    return row, _unit(_cross(row, column))


def _parallel(a: _Image, b: _Image) -> bool:
    """Normals parallel (either sign) and row directions pointing the same way, within tolerance."""
    return abs(_dot(a.normal, b.normal)) >= _PARALLEL_COSINE and _dot(a.row, b.row) >= _PARALLEL_COSINE


def _images(instance: SpooledInstance, root: Path | None) -> Sequence[SpooledInstance] | SkipReason:
    """The images an instance holds: itself, or each frame of an Enhanced MR instance (read from its file)."""
    if instance.header.sop_class_uid not in SPLIT_MR_CLASSES:
        return (instance,)
    frames = split_frames(instance, Path(instance.path) if root is None else root / instance.path)
    if frames is FrameProblem.UNREADABLE:
        return SkipReason.UNREADABLE
    if isinstance(frames, FrameProblem):
        return SkipReason.NO_GEOMETRY
    return frames


def _screen(instance: SpooledInstance, arrival: int) -> _Image | SkipReason:
    """Decode one image's geometry, or say why it cannot be part of a SAX cine stack."""
    header = instance.header
    if not isinstance(instance, SpooledFrame):
        if header.sop_class_uid in _UNSPLIT_MULTI_FRAME_MR_CLASSES:
            return SkipReason.MULTI_FRAME_UNSUPPORTED
        if header.sop_class_uid != MRImageStorage:
            return SkipReason.NOT_AN_IMAGE if header.rows is None else SkipReason.NOT_MR_IMAGE
        if (header.number_of_frames or 1) > 1:
            return SkipReason.MULTI_FRAME_UNSUPPORTED
    image_type = tuple(value.strip().upper() for value in header.image_type)
    if image_type and image_type[0] == _DERIVED:
        return SkipReason.DERIVED
    if _LOCALIZER in image_type:
        return SkipReason.LOCALIZER
    position, orientation = header.image_position, header.image_orientation
    spacing, rows, columns = header.pixel_spacing, header.rows, header.columns
    if position is None or orientation is None or spacing is None or rows is None or columns is None:
        return SkipReason.NO_GEOMETRY
    axes = _axes(orientation)
    if (
        axes is None
        or rows <= 0
        or columns <= 0
        or not all(math.isfinite(value) for value in position)
        or not all(math.isfinite(value) and value > 0 for value in spacing)
    ):
        return SkipReason.NO_GEOMETRY
    return _Image(instance, arrival, orientation, position, axes[0], axes[1], spacing, rows, columns)


def _acquired(value: str | None) -> tuple[int | None, float] | None:
    """An indexed acquisition moment (DT from :func:`dated_time`, or TM) as (day, seconds since
    midnight); the day is None for a bare time. None when unusable."""
    if not value:
        return None
    text = value.strip()
    if len(text.replace(":", "").partition(".")[0]) <= TM_DIGITS:
        bare = time_of(text)
        return None if bare is None else (None, seconds_of_day(bare))
    moment = datetime_of(text)
    return None if moment is None else (moment.toordinal(), seconds_of_day(moment.time()))


def _all_dated(images: Iterable[_Image]) -> bool:
    """Whether every image with an acquisition moment has its date: only then do dates count."""
    moments = (_acquired(image.instance.header.acquisition_time) for image in images)
    return all(moment[0] is not None for moment in moments if moment is not None)


def _recency(images: Sequence[_Image], dated: bool) -> tuple[bool, float, bool, int, int]:
    """Sort key, larger is later: acquisition moment, Series Number (0020,0011), arrival.

    The moment is Acquisition Date and Time where ``dated`` (all images compared have a date), else
    Acquisition Time (0008,0032) alone.
    """
    moments = [m for m in (_acquired(i.instance.header.acquisition_time) for i in images) if m is not None]
    times = [seconds + (day * _SECONDS_PER_DAY if dated and day else 0) for day, seconds in moments]
    numbers = [n for n in (i.instance.header.series_number for i in images) if n is not None]
    return (
        bool(times),
        min(times) if times else 0.0,
        bool(numbers),
        max(numbers) if numbers else 0,
        max(i.arrival for i in images),
    )


def _cluster(values: Sequence[float], tolerance: float) -> list[list[int]]:
    """Indices of ``values`` grouped so each group spans at most ``tolerance``, groups ascending."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []
    start = -math.inf
    for index in order:
        if values[index] - start > tolerance:
            groups.append([])
            start = values[index]
        groups[-1].append(index)
    return groups


def _phase_count(images: Sequence[_Image]) -> int:
    """Distinct Trigger Times at one position; the image count when some Trigger Time is missing."""
    times = [image.trigger_time for image in images]
    if any(t is None for t in times):
        return len(images)
    return len(_cluster([t for t in times if t is not None], TRIGGER_TIME_TOLERANCE_MS))


def _phase_order(images: Sequence[_Image], dated: bool) -> tuple[list[_Image], list[_Image]]:
    """One position's images in phase order, and those superseded by a later image of the same phase.

    Phases are ordered by Trigger Time (0018,1060), or by Instance Number (0020,0013) when any
    Trigger Time is missing. ``dated`` as for :func:`_recency`.
    """
    if any(image.trigger_time is None for image in images):
        ordered = sorted(images, key=lambda i: (i.instance.header.instance_number or 0, i.arrival))
        return ordered, []
    times = [image.trigger_time or 0.0 for image in images]
    kept: list[_Image] = []
    replaced: list[_Image] = []
    for group in _cluster(times, TRIGGER_TIME_TOLERANCE_MS):
        members = sorted(
            (images[i] for i in group),
            key=lambda i: (*_recency([i], dated), i.instance.header.instance_number or 0),
        )
        kept.append(members[-1])
        replaced.extend(members[:-1])
    return kept, replaced


def _align(times: Sequence[float], targets: Sequence[float]) -> list[int]:
    """Increasing phase indices for ``times`` minimising the summed distance to ``targets``.

    ``len(times) <= len(targets)``; dynamic programming over (image, phase), ties to the earlier phase.
    """
    count, phases = len(times), len(targets)
    cost = [[math.inf] * phases for _ in range(count)]
    back = [[-1] * phases for _ in range(count)]
    for phase in range(phases):
        cost[0][phase] = abs(times[0] - targets[phase])
    for index in range(1, count):
        best, best_phase = math.inf, -1
        for phase in range(1, phases):
            if cost[index - 1][phase - 1] < best:
                best, best_phase = cost[index - 1][phase - 1], phase - 1
            if best_phase >= 0:
                cost[index][phase] = best + abs(times[index] - targets[phase])
                back[index][phase] = best_phase
    last = min(range(phases), key=lambda phase: (cost[count - 1][phase], phase))
    path = [last]
    for index in range(count - 1, 0, -1):
        path.append(back[index][path[-1]])
    return path[::-1]


def _median_or_none(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(statistics.median(known)) if known else None


def _grid(
    slices: Sequence[Sequence[_Image]],
) -> tuple[list[list[_Image | None]], tuple[float | None, ...]]:
    """Place each slice's phase-ordered images on a common phase axis.

    Phase k is the k-th trigger time of the slices with the most phases. A shorter slice is aligned by
    nearest Trigger Time to the per-phase median of the full slices, leaving None where it has no image.
    """
    phases = max(len(images) for images in slices)
    full = [images for images in slices if len(images) == phases]
    timed = [images for images in full if all(image.trigger_time is not None for image in images)]
    targets = [_median_or_none(images[k].trigger_time for images in timed) for k in range(phases)]
    grid: list[list[_Image | None]] = []
    for images in slices:
        row: list[_Image | None] = [None] * phases
        times = [image.trigger_time for image in images]
        known_times = [t for t in times if t is not None]
        known_targets = [t for t in targets if t is not None]
        if len(images) < phases and len(known_times) == len(times) and len(known_targets) == phases:
            indices = _align(known_times, known_targets)
        else:
            indices = list(range(len(images)))
        for image, index in zip(images, indices, strict=True):
            row[index] = image
        grid.append(row)
    trigger_times = tuple(
        _median_or_none(cell.trigger_time for row in grid if (cell := row[k]) is not None)
        for k in range(phases)
    )
    return grid, trigger_times


def _holds_missing_slices(gap: float, spacing: float) -> bool:
    """Whether a gap between neighbouring slices leaves slices out (flagged, and counted in volumes)."""
    return gap >= MISSING_SLICE_RATIO * spacing


def _spacing_flags(positions: Sequence[float]) -> tuple[float, set[QcFlag]]:
    """Median slice spacing, and the flags its gaps and irregularities raise."""
    gaps = [b - a for a, b in itertools.pairwise(positions)]
    spacing = float(statistics.median(gaps))
    flags: set[QcFlag] = set()
    for gap in gaps:
        if _holds_missing_slices(gap, spacing):
            flags.add(QcFlag.MISSING_SLICES)
        elif abs(gap - spacing) > IRREGULAR_SPACING_FRACTION * spacing:
            flags.add(QcFlag.IRREGULAR_SLICE_SPACING)
    return spacing, flags


def _modal(values: Iterable[_K]) -> _K:
    """The most common value; ties go to the smallest, so the result does not depend on input order."""
    counts = Counter(values)
    return min(counts, key=lambda key: (-counts[key], key))


def _majority_geometry(images: Sequence[_Image]) -> tuple[int, int, tuple[float, float]]:
    """The most common (Rows, Columns, Pixel Spacing) of a stack's images."""
    return _modal((image.rows, image.columns, image.pixel_spacing) for image in images)


def _agrees(image: _Image, geometry: tuple[int, int, tuple[float, float]]) -> bool:
    rows, columns, spacing = geometry
    return (
        image.rows == rows
        and image.columns == columns
        and abs(image.pixel_spacing[0] - spacing[0]) <= PIXEL_SPACING_TOLERANCE_MM
        and abs(image.pixel_spacing[1] - spacing[1]) <= PIXEL_SPACING_TOLERANCE_MM
    )


def _orientation_groups(images: Sequence[_Image]) -> list[list[_Image]]:
    """Group images whose planes are parallel; the most common orientation of each group is its reference.

    Orientations are visited from most to least common, so the grouping does not depend on arrival order.
    """
    by_orientation: dict[Orientation, list[_Image]] = defaultdict(list)
    for image in images:
        by_orientation[image.orientation].append(image)
    references: list[_Image] = []
    groups: list[list[_Image]] = []
    for orientation in sorted(by_orientation, key=lambda o: (-len(by_orientation[o]), o)):
        members = by_orientation[orientation]
        for reference, group in zip(references, groups, strict=True):
            if _parallel(reference, members[0]):
                group.extend(members)
                break
        else:
            references.append(members[0])
            groups.append(list(members))
    return groups


def _build(
    images: Sequence[_Image], frame_of_reference_uid: str | None, skipped: Counter[str]
) -> StackPlan | None:
    """The SAX cine stack formed by one group of parallel images, or None (counting why) if there is none."""
    flags: set[QcFlag] = set()
    pending: Counter[str] = Counter()
    reference = _modal(image.orientation for image in images)
    normal = next(image.normal for image in images if image.orientation == reference)
    projections = [_dot(image.centre, normal) for image in images]

    # Units: one acquisition (series, Acquisition Number (0020,0012)) at one position.
    units: dict[tuple[int, str, int], list[_Image]] = defaultdict(list)
    for slot, indices in enumerate(_cluster(projections, POSITION_TOLERANCE_MM)):
        for index in indices:
            header = images[index].instance.header
            units[(slot, header.series_instance_uid, header.acquisition_number or 0)].append(images[index])
    cine_series = {key[1] for key, unit in units.items() if _phase_count(unit) >= MIN_PHASES}
    for key in [key for key in units if key[1] not in cine_series]:
        pending[SkipReason.NOT_CINE.value] += len(units.pop(key))

    if units:
        geometry = _majority_geometry([image for unit in units.values() for image in unit])
        for key, unit in list(units.items()):
            kept = [image for image in unit if _agrees(image, geometry)]
            if len(kept) < len(unit):
                flags.add(QcFlag.INCONSISTENT_GEOMETRY)
                pending[SkipReason.INCONSISTENT_GEOMETRY.value] += len(unit) - len(kept)
            if kept:
                units[key] = kept
            else:
                del units[key]

    by_slot: dict[int, list[list[_Image]]] = defaultdict(list)
    for key, unit in units.items():
        by_slot[key[0]].append(unit)
    # Where a position was acquired more than once, an acquisition with the stack's usual number of
    # phases beats one without: a TI scout or other multi-time series planned on a cine slice must not
    # replace that slice (nor set the phase axis). Among equals, the later acquisition wins.
    usual_phases = _modal((_phase_count(unit),) for unit in units.values())[0] if units else 0
    dated = _all_dated(image for unit in units.values() for image in unit)
    slices: list[list[_Image]] = []
    for slot in sorted(by_slot):
        candidates = sorted(
            by_slot[slot], key=lambda unit: (_phase_count(unit) == usual_phases, *_recency(unit, dated))
        )
        for superseded in candidates[:-1]:
            flags.add(QcFlag.DUPLICATE_POSITIONS_REPLACED)
            pending[SkipReason.SUPERSEDED.value] += len(superseded)
        ordered, replaced = _phase_order(candidates[-1], dated)
        if replaced:
            flags.add(QcFlag.DUPLICATE_POSITIONS_REPLACED)
            pending[SkipReason.SUPERSEDED.value] += len(replaced)
        slices.append(ordered)

    if sum(len(cine) >= MIN_PHASES for cine in slices) < MIN_SLICES:
        skipped[SkipReason.NOT_SAX_GROUP.value] += len(images)
        return None
    skipped.update(pending)
    return _plan(slices, frame_of_reference_uid, flags)


def _plan(
    slices: Sequence[Sequence[_Image]], frame_of_reference_uid: str | None, flags: set[QcFlag]
) -> StackPlan:
    """Lay out the chosen slices on the stack's own normal, ascending, and measure their spacing."""
    placed = [image for images in slices for image in images]
    orientation = _modal(image.orientation for image in placed)
    normal = next(image.normal for image in placed if image.orientation == orientation)
    positioned = sorted(
        ((float(statistics.median(_dot(i.centre, normal) for i in images)), images) for images in slices),
        key=lambda pair: pair[0],
    )
    positions = [position for position, _ in positioned]
    grid, trigger_times = _grid([images for _, images in positioned])
    if any(cell is None for row in grid for cell in row):
        flags.add(QcFlag.MISSING_PHASES)
    spacing, spacing_flags = _spacing_flags(positions)
    flags |= spacing_flags
    if any(i.instance.header.frame_of_reference_uid != frame_of_reference_uid for i in placed):
        flags.add(QcFlag.INCONSISTENT_FRAME_OF_REFERENCE)
    first = placed[0]
    rows, columns, pixel_spacing = _majority_geometry(placed)
    return StackPlan(
        study_instance_uid=first.instance.header.study_instance_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_instance_uids=tuple(sorted({i.instance.header.series_instance_uid for i in placed})),
        orientation=orientation,
        normal=normal,
        slice_positions_mm=tuple(positions),
        slice_spacing_mm=spacing,
        pixel_spacing=pixel_spacing,
        rows=rows,
        columns=columns,
        trigger_times_ms=trigger_times,
        grid=tuple(tuple(cell.instance if cell else None for cell in row) for row in grid),
        flags=tuple(flag for flag in QcFlag if flag in flags),
    )


def find_sax_stacks(instances: Sequence[SpooledInstance], root: Path | None = None) -> StackSearch:
    """Find every short-axis cine stack among indexed instances and lay each out as slice x phase.

    Parameters
    ----------
    instances
        Instances in arrival order, as :meth:`node.store.index.Index.study_instances` returns them;
        several studies may be mixed, each stack belongs to one.
    root
        Directory the instances' relative paths are resolved against (the spool root), used only to
        read the functional groups of Enhanced MR instances; None uses the paths as they are.

    Returns
    -------
    StackSearch
        One :class:`StackPlan` per group of parallel images (same Study Instance UID, Frame of
        Reference UID and orientation) at :data:`MIN_SLICES` or more positions with
        :data:`MIN_PHASES` or more trigger times each, sorted by study, frame of reference and
        series; and the count of every image left out, by :class:`SkipReason`. Empty ``stacks``
        means the study has no usable SAX cine. Nothing is raised for odd input.

    Notes
    -----
    A series whose instances disagree on Frame of Reference UID is grouped with the study's images
    that have none. Within a group, a series with fewer than :data:`MIN_PHASES` trigger times at every
    position (late enhancement planned like the cine, say) is left out as ``not_cine`` rather than
    mixed into the stack. Where a position was acquired twice, an acquisition with the number of
    phases most of the stack's acquisitions have wins over one without (a TI scout planned on a cine
    slice, say); among those, the later acquisition wins: by Acquisition Date and Time (0008,0022 and
    0008,0032; the time alone where some image lacks a valid date), then Series Number (0020,0011),
    then arrival order.
    """
    skipped: Counter[str] = Counter()
    latest: dict[str, int] = {}
    for order, instance in enumerate(instances):
        latest[instance.header.sop_instance_uid] = order
    screened: list[_Image] = []
    arrivals = itertools.count()
    for order, instance in enumerate(instances):
        if latest[instance.header.sop_instance_uid] != order:
            skipped[SkipReason.DUPLICATE_INSTANCE.value] += 1
            continue
        images = _images(instance, root)
        if isinstance(images, SkipReason):
            skipped[images.value] += 1
            continue
        for candidate in images:
            result = _screen(candidate, next(arrivals))
            if isinstance(result, SkipReason):
                skipped[result.value] += 1
            else:
                screened.append(result)

    frames: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for image in screened:
        header = image.instance.header
        frames[(header.study_instance_uid, header.series_instance_uid)].add(header.frame_of_reference_uid)
    groups: dict[tuple[str, str | None], list[_Image]] = defaultdict(list)
    for image in screened:
        header = image.instance.header
        series_frames = frames[(header.study_instance_uid, header.series_instance_uid)]
        frame = next(iter(series_frames)) if len(series_frames) == 1 else None
        groups[(header.study_instance_uid, frame)].append(image)

    stacks: list[StackPlan] = []
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        for group in _orientation_groups(groups[key]):
            plan = _build(group, key[1], skipped)
            if plan is not None:
                stacks.append(plan)
    stacks.sort(key=lambda p: (p.study_instance_uid, p.frame_of_reference_uid or "", p.series_instance_uids))
    return StackSearch(stacks=tuple(stacks), skipped=dict(sorted(skipped.items())))
