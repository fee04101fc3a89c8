"""Load the source images a report refers to, and make their headers safe for highdicom to copy.

A source image is a single-frame instance or one frame of a multi-frame instance (Enhanced or Legacy
Converted Enhanced MR, PS3.3 A.36.2, A.71): a stack grid cell that has a ``frame_number``
(:class:`FrameCell`). A multi-frame file is read once per report, and only the frames drawn are
decoded; reports reference such an image by instance and Referenced Frame Number (0008,1160).

Reports copy the Patient and Study modules (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2) from a source image.
Real headers carry dates such as '00000000' or '20120000' that are not valid DA values (PS3.5 6.2) and
make highdicom raise; :func:`sanitised_for_copy` blanks them. UIDs are never touched: a PACS files the
node's results by the source's Study Instance UID, even one with leading zeros that PS3.5 9.1 forbids.
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from node.dicom.instance import SpooledInstance
from node.domain import StackResult
from node.images.pixels import UnreadablePixels, grey_levels, read_frame
from node.reports.errors import ReportError

#: Value representations whose values :func:`sanitised_for_copy` checks (PS3.5 Table 6.2-1).
DATE_TIME_VRS: Final = frozenset({"DA", "DT", "TM"})
#: Patient and Study attributes highdicom reads by attribute access from the first source dataset;
#: all are Type 2 (PS3.3 C.7.1.1, C.7.2.1), so an absent one is added empty rather than crashing it.
TYPE2_COPIED: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
#: Patient's Sex (0010,0040) enumerated values (PS3.3 C.7.1.1); anything else is blanked.
PATIENT_SEX_VALUES: Final = frozenset({"M", "F", "O", ""})

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?([+-]\d{4})?$"
)
_HOURS: Final = 24
_MINUTES: Final = 60
#: PS3.5 6.2 allows a leap second: SS is 00-60.
_SECONDS_WITH_LEAP: Final = 61
_OFFSET_HOURS_MAX: Final = 14


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def valid_da(value: str) -> bool:
    """Whether ``value`` is a DA value of PS3.5 Table 6.2-1: YYYYMMDD, a real calendar date."""
    match = _DA.match(value.strip())
    if not match:
        return False
    year, month, day = (int(group) for group in match.groups())
    return _valid_date(year, month, day)


def valid_tm(value: str) -> bool:
    """Whether ``value`` is a TM value of PS3.5 Table 6.2-1: HH[MM[SS[.FFFFFF]]] within range."""
    match = _TM.match(value.strip())
    if not match:
        return False
    hours, minutes, seconds, _ = match.groups()
    return (
        int(hours) < _HOURS
        and (minutes is None or int(minutes) < _MINUTES)
        and (seconds is None or int(seconds) < _SECONDS_WITH_LEAP)
    )


def valid_dt(value: str) -> bool:
    """Whether ``value`` is a DT value of PS3.5 Table 6.2-1: YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]."""
    match = _DT.match(value.strip())
    if not match:
        return False
    year, month, day, hours, minutes, seconds, _, offset = match.groups()
    if month is not None and not _valid_date(int(year), int(month), int(day or 1)):
        return False
    if offset is not None and int(offset[1:3]) > _OFFSET_HOURS_MAX:
        return False
    return valid_tm("".join(part for part in (hours, minutes, seconds) if part)) if hours else True


_VALIDATORS: Final = {"DA": valid_da, "DT": valid_dt, "TM": valid_tm}


def _values(value: object) -> list[str]:
    if isinstance(value, MultiValue | list | tuple):
        return [str(item) for item in value]
    return [str(value)]


def _sanitise_in_place(dataset: Dataset) -> None:
    for element in dataset.iterall():
        if element.VR not in DATE_TIME_VRS or element.value in (None, ""):
            continue
        valid = _VALIDATORS[element.VR]
        if not all(valid(item) for item in _values(element.value)):
            element.value = ""


def sanitised_for_copy(dataset: Dataset) -> Dataset:
    """A copy of ``dataset`` whose DA, DT and TM values are valid or empty, for highdicom to copy.

    Every DA/DT/TM element, nested ones included, whose value is not valid per PS3.5 Table 6.2-1
    ('00000000', '20120000', '25:00') is blanked; empty is allowed for the Type 2 and Type 3 dates of
    the Patient and General Study modules highdicom copies (PS3.3 C.7.1.1, C.7.2.1). Type 2
    attributes highdicom reads (:data:`TYPE2_COPIED`) are added empty when absent, and a Patient's Sex
    outside its enumerated values is blanked. No UID is changed; the input is not modified.
    """
    result = copy.deepcopy(dataset)
    _sanitise_in_place(result)
    for keyword in TYPE2_COPIED:
        if keyword not in result:
            setattr(result, keyword, None)
    if str(result.get("PatientSex") or "").strip() not in PATIENT_SEX_VALUES:
        result.PatientSex = None
    return result


def without_patient_name(dataset: Dataset) -> Dataset:
    """A copy with an empty Patient's Name, to hand to a highdicom constructor.

    highdicom warns (``warnings`` and its logger) with the name itself when a Patient's Name has a
    single component, which is valid PN but "likely an error"; that would put a patient identifier
    in the node's logs. Builders pass this copy, then copy the Patient and Study modules from the
    real (sanitised) source with ``copy_patient_and_study_information``, which does not check names.
    """
    result = copy.deepcopy(dataset)
    result.PatientName = None
    return result


def read_header(path: Path) -> Dataset:
    """A source instance without its pixel data (enough for references and copied modules).

    Raises
    ------
    ReportError
        The file cannot be read as DICOM.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as error:
        raise ReportError(f"cannot read source instance: {type(error).__name__}") from None


def read_image(path: Path) -> Dataset:
    """A source instance with its pixel data (for the frames drawn on the secondary capture).

    Raises
    ------
    ReportError
        The file cannot be read as DICOM.
    """
    try:
        return pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as error:
        raise ReportError(f"cannot read source instance: {type(error).__name__}") from None


@runtime_checkable
class FrameCell(Protocol):
    """A stack grid cell that is one frame of a multi-frame instance.

    :class:`node.images.frames.SpooledFrame` is one; reports take cells by this shape rather than
    import the pipeline that calls them.
    """

    @property
    def frame_number(self) -> int:
        """The frame's number within its instance, from 1 (PS3.3 C.7.6.6)."""
        ...


def frame_number_of(cell: SpooledInstance) -> int | None:
    """The cell's frame number in its multi-frame instance; None for a single-frame image."""
    return cell.frame_number if isinstance(cell, FrameCell) else None


def frame_functional_group(dataset: Dataset, frame_number: int, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` that applies to a frame of a multi-frame image.

    The frame's own item in the Per-Frame Functional Groups Sequence (5200,9230) takes precedence
    over the Shared Functional Groups Sequence (5200,9229) (PS3.3 C.7.6.16); None when neither has it.
    """
    containers: list[Dataset] = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or ()
    if 1 <= frame_number <= len(per_frame):
        containers.append(per_frame[frame_number - 1])
    containers.extend((dataset.get("SharedFunctionalGroupsSequence") or ())[:1])
    for container in containers:
        items = container.get(keyword)
        if items:
            item: Dataset = items[0]
            return item
    return None


def _plane_value(dataset: Dataset, frame_number: int | None, group: str, keyword: str) -> list[float] | None:
    holder = dataset if frame_number is None else frame_functional_group(dataset, frame_number, group)
    value = holder.get(keyword) if holder is not None else None
    return [float(v) for v in value] if value else None


def image_orientation(dataset: Dataset, frame_number: int | None = None) -> list[float] | None:
    """Image Orientation (Patient) (0020,0037) of an image, None when it has none.

    For a frame of a multi-frame image, from its Plane Orientation (Patient) functional group
    (PS3.3 C.7.6.16.2.4); else the top-level attribute (PS3.3 C.7.6.2).
    """
    return _plane_value(dataset, frame_number, "PlaneOrientationSequence", "ImageOrientationPatient")


def image_position(dataset: Dataset, frame_number: int | None = None) -> list[float] | None:
    """Image Position (Patient) (0020,0032) of an image, None when it has none.

    For a frame of a multi-frame image, from its Plane Position (Patient) functional group
    (PS3.3 C.7.6.16.2.3); else the top-level attribute (PS3.3 C.7.6.2).
    """
    return _plane_value(dataset, frame_number, "PlanePositionSequence", "ImagePositionPatient")


@dataclass(frozen=True, eq=False)
class ReportSources:
    """The source datasets of one stack's reports.

    Attributes
    ----------
    ed_headers, es_headers
        Headers (no pixel data) of the instances holding every slice's image at the ED and ES phase,
        in slice order, each instance once (a multi-frame instance holds the images of several
        slices); slices without an image at that phase contribute nothing.
    mid_slice
        Slice index of the mid-ventricular slice (see :func:`mid_ventricular_slice`).
    ed_image, es_image
        The instances of the mid-ventricular slice's ED and ES images: a single-frame image with its
        pixel data; a multi-frame instance as its header only (its frame is in ``ed_pixels``).
    ed_frame_numbers, es_frame_numbers
        Per slice, as the result's ``ed_sop_instance_uids``/``es_sop_instance_uids``: the image's
        frame number in its multi-frame instance, None for a single-frame image or a missing one.
    ed_pixels, es_pixels
        The mid-ventricular slice's ED and ES frames, Modality LUT applied (PS3.3 C.11.1).
    """

    ed_headers: tuple[Dataset, ...]
    es_headers: tuple[Dataset, ...]
    mid_slice: int
    ed_image: Dataset
    es_image: Dataset
    ed_frame_numbers: tuple[int | None, ...]
    es_frame_numbers: tuple[int | None, ...]
    ed_pixels: npt.NDArray[np.float32]
    es_pixels: npt.NDArray[np.float32]

    @property
    def evidence(self) -> tuple[Dataset, ...]:
        """ED then ES headers, each instance once: the images an SR references (PS3.3 C.17.2.3)."""
        seen: set[str] = set()
        unique: list[Dataset] = []
        for dataset in self.ed_headers + self.es_headers:
            uid = str(dataset.SOPInstanceUID)
            if uid not in seen:
                seen.add(uid)
                unique.append(dataset)
        return tuple(unique)

    @property
    def drawn_frame_numbers(self) -> tuple[int | None, int | None]:
        """Frame numbers of the mid-ventricular ED and ES images (None for single-frame images)."""
        return self.ed_frame_numbers[self.mid_slice], self.es_frame_numbers[self.mid_slice]


def mid_ventricular_slice(result: StackResult) -> int:
    """The middle slice among those with LV blood pool at ED and an image at both ED and ES.

    Falls back to the middle slice with images at both phases when no slice has blood pool.

    Raises
    ------
    ReportError
        No slice has an image at both ED and ES.
    """
    both = [
        index
        for index, (ed, es) in enumerate(
            zip(result.ed_sop_instance_uids, result.es_sop_instance_uids, strict=True)
        )
        if ed is not None and es is not None
    ]
    if not both:
        raise ReportError("no slice has an image at both end diastole and end systole")
    with_lv = [index for index in both if result.blood_pool_mm2[index][result.ed_phase] > 0]
    candidates = with_lv or both
    return candidates[len(candidates) // 2]


class _Headers:
    """Headers read once per file: the frames of a multi-frame instance share one."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._read: dict[str, Dataset] = {}

    def __call__(self, cell: SpooledInstance) -> Dataset:
        if cell.path not in self._read:
            self._read[cell.path] = read_header(self._root / cell.path)
        return self._read[cell.path]


def decode_frame(path: Path, header: Dataset, frame_number: int) -> npt.NDArray[np.float32]:
    """One frame of a multi-frame image file (``header``: its dataset without pixels), decoded alone
    as the pipeline decodes it (:func:`node.images.pixels.read_frame`): grey levels, MONOCHROME1
    inverted, the frame's own Modality LUT applied.

    Raises
    ------
    ReportError
        The frame cannot be decoded.
    """
    if not 1 <= frame_number <= int(header.get("NumberOfFrames") or 1):
        raise ReportError("frame number outside Number of Frames")
    try:
        return read_frame(path, frame_number)
    except UnreadablePixels as error:
        raise ReportError(f"source image: {error}") from None


def load_report_sources(
    grid: Sequence[Sequence[SpooledInstance | None]], result: StackResult, root: Path
) -> ReportSources:
    """Read what a draft SR and the secondary capture need from a stack's files.

    Parameters
    ----------
    grid
        ``grid[slice][phase]`` of the stack plan the result was measured on; a cell may be a frame
        of a multi-frame instance (:class:`FrameCell`).
    result
        The measured stack; its ED/ES phases and SOP Instance UIDs select the images.
    root
        Directory relative paths of the grid are resolved against.

    Raises
    ------
    ReportError
        The grid does not match the result, or a file cannot be read.
    """
    if len(grid) != result.slices or any(len(row) != result.phases for row in grid):
        raise ReportError("stack grid and result differ in slices or phases")
    header_of = _Headers(root)

    def phase_sources(
        phase: int, expected: Sequence[str | None]
    ) -> tuple[tuple[Dataset, ...], tuple[int | None, ...]]:
        found: dict[str, Dataset] = {}
        frames: list[int | None] = []
        for row, uid in zip(grid, expected, strict=True):
            cell = row[phase]
            frames.append(None if cell is None else frame_number_of(cell))
            if cell is None:
                continue
            if cell.header.sop_instance_uid != uid:
                raise ReportError("stack grid and result disagree on the images of a phase")
            found.setdefault(cell.header.sop_instance_uid, header_of(cell))
        return tuple(found.values()), tuple(frames)

    def drawn(cell: SpooledInstance) -> tuple[Dataset, npt.NDArray[np.float32]]:
        number = frame_number_of(cell)
        if number is None:
            image = read_image(root / cell.path)
            return image, frame_pixels(image)
        header = header_of(cell)
        return header, decode_frame(root / cell.path, header, number)

    mid = mid_ventricular_slice(result)
    ed_cell, es_cell = grid[mid][result.ed_phase], grid[mid][result.es_phase]
    if ed_cell is None or es_cell is None:
        raise ReportError("mid-ventricular slice lacks its ED or ES image")
    ed_headers, ed_frames = phase_sources(result.ed_phase, result.ed_sop_instance_uids)
    es_headers, es_frames = phase_sources(result.es_phase, result.es_sop_instance_uids)
    ed_image, ed_pixels = drawn(ed_cell)
    es_image, es_pixels = drawn(es_cell)
    return ReportSources(
        ed_headers=ed_headers,
        es_headers=es_headers,
        mid_slice=mid,
        ed_image=ed_image,
        es_image=es_image,
        ed_frame_numbers=ed_frames,
        es_frame_numbers=es_frames,
        ed_pixels=ed_pixels,
        es_pixels=es_pixels,
    )


def load_stack_headers(
    grid: Sequence[Sequence[SpooledInstance | None]], root: Path
) -> tuple[tuple[Dataset | None, ...], ...]:
    """Headers of every cell of a stack, ``[slice][phase]``, None where a cell is missing (for SEG).

    The cells of one multi-frame instance share one header, read once.
    """
    header_of = _Headers(root)
    return tuple(tuple(header_of(cell) if cell is not None else None for cell in row) for row in grid)


def stack_frame_numbers(
    grid: Sequence[Sequence[SpooledInstance | None]],
) -> tuple[tuple[int | None, ...], ...]:
    """Frame number of every cell of a stack, ``[slice][phase]``; None for single-frame or missing cells."""
    return tuple(tuple(None if cell is None else frame_number_of(cell) for cell in row) for row in grid)


def frame_pixels(dataset: Dataset) -> npt.NDArray[np.float32]:
    """The decoded frame of a single-frame image as grey levels (Modality LUT, MONOCHROME1 inverted).

    Raises
    ------
    ReportError
        The pixel data cannot be decoded.
    """
    try:
        return grey_levels(dataset.pixel_array, dataset)
    except Exception as error:  # noqa: BLE001 - pixel decoders raise many types
        raise ReportError(f"cannot decode source pixel data: {type(error).__name__}") from None
