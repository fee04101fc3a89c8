"""Load the source images a report refers to, and make their headers safe for highdicom to copy.

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
from typing import Final

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut

from node.domain import StackResult
from node.reports.errors import ReportError
from node.store.instance import SpooledInstance

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


@dataclass(frozen=True)
class ReportSources:
    """The source datasets of one stack's reports.

    Attributes
    ----------
    ed_headers, es_headers
        Headers (no pixel data) of every slice's image at the ED and ES phase, in slice order; slices
        without an image at that phase are left out.
    mid_slice
        Slice index of the mid-ventricular slice (see :func:`mid_ventricular_slice`).
    ed_image, es_image
        The mid-ventricular slice's ED and ES images, with pixel data.
    """

    ed_headers: tuple[Dataset, ...]
    es_headers: tuple[Dataset, ...]
    mid_slice: int
    ed_image: Dataset
    es_image: Dataset

    @property
    def evidence(self) -> tuple[Dataset, ...]:
        """ED then ES headers: the images an SR references (PS3.3 C.17.2.3 evidence)."""
        return self.ed_headers + self.es_headers


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


def load_report_sources(
    grid: Sequence[Sequence[SpooledInstance | None]], result: StackResult, root: Path
) -> ReportSources:
    """Read what a draft SR and the secondary capture need from a stack's files.

    Parameters
    ----------
    grid
        ``grid[slice][phase]`` of the stack plan the result was measured on.
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

    def headers(phase: int, expected: Sequence[str | None]) -> tuple[Dataset, ...]:
        found: list[Dataset] = []
        for row, uid in zip(grid, expected, strict=True):
            cell = row[phase]
            if cell is None:
                continue
            if cell.header.sop_instance_uid != uid:
                raise ReportError("stack grid and result disagree on the images of a phase")
            found.append(read_header(root / cell.path))
        return tuple(found)

    mid = mid_ventricular_slice(result)
    ed_cell, es_cell = grid[mid][result.ed_phase], grid[mid][result.es_phase]
    if ed_cell is None or es_cell is None:
        raise ReportError("mid-ventricular slice lacks its ED or ES image")
    return ReportSources(
        ed_headers=headers(result.ed_phase, result.ed_sop_instance_uids),
        es_headers=headers(result.es_phase, result.es_sop_instance_uids),
        mid_slice=mid,
        ed_image=read_image(root / ed_cell.path),
        es_image=read_image(root / es_cell.path),
    )


def load_stack_headers(
    grid: Sequence[Sequence[SpooledInstance | None]], root: Path
) -> tuple[tuple[Dataset | None, ...], ...]:
    """Headers of every cell of a stack, ``[slice][phase]``, None where a cell is missing (for SEG)."""
    return tuple(
        tuple(read_header(root / cell.path) if cell is not None else None for cell in row) for row in grid
    )


def frame_pixels(dataset: Dataset) -> npt.NDArray[np.float32]:
    """The decoded frame of a single-frame image, Modality LUT applied (PS3.3 C.11.1).

    Raises
    ------
    ReportError
        The pixel data cannot be decoded.
    """
    try:
        pixels = apply_modality_lut(dataset.pixel_array, dataset)
    except Exception as error:  # noqa: BLE001 - pixel decoders raise many types
        raise ReportError(f"cannot decode source pixel data: {type(error).__name__}") from None
    return np.asarray(pixels, dtype=np.float32)
