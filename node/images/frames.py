"""Split a multi-frame MR instance into one record per frame, with that frame's geometry and timing.

Enhanced MR Image (PS3.3 A.36.2) and Legacy Converted Enhanced MR Image (PS3.3 A.71) hold a whole
cine, or a whole stack, in one instance. What MR Image Storage puts at the top level lives there in
the Multi-frame Functional Groups Module (PS3.3 C.7.6.16), per frame or shared by all frames: Plane
Position (Patient) (C.7.6.16.2.3), Plane Orientation (Patient) (C.7.6.16.2.4), Pixel Measures
(C.7.6.16.2.1), Cardiac Synchronization (C.7.6.16.2.7), Frame Content (C.7.6.16.2.2) and Pixel Value
Transformation (C.7.6.16.2.9). A legacy conversion keeps Trigger Time (0018,1060) in its Unassigned
Per-Frame Converted Attributes Sequence (0020,9171).

The index keeps one row per instance, so these values are read from the file when stacks are found.
Each frame becomes a :class:`SpooledFrame`: the instance's path and header, with the header's
geometry and timing replaced by the frame's own, which the stack finder then treats like a
single-frame image.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage

from node.dicom.dates import DA_DIGITS, datetime_of
from node.dicom.instance import InstanceHeader, SpooledInstance, dated_time, floats, texts

#: Multi-frame greyscale MR classes whose frames can fill a stack's cells (PS3.4 B.5).
SPLIT_MR_CLASSES: Final = frozenset(
    str(uid) for uid in (EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)
)

_T = TypeVar("_T")
#: The sign that starts the optional "&ZZXX" UTC offset of a DT value.
_UTC_OFFSET: Final = re.compile(r"[+-]")


@dataclass(frozen=True)
class SpooledFrame(SpooledInstance):
    """One frame of a multi-frame instance, usable wherever a single-frame instance is.

    ``header`` is the instance's header with Image Position and Orientation (Patient), Pixel
    Spacing, Trigger Time, Image Type (from Frame Type) and Acquisition Time replaced by this frame's
    values; every other field, SOP Instance UID and Number of Frames included, is the instance's.

    Attributes
    ----------
    frame_number
        The frame's number within the instance, from 1 (Multi-frame Module, PS3.3 C.7.6.6).
    """

    frame_number: int


class FrameProblem(StrEnum):
    """Why a multi-frame instance could not be split into frames."""

    #: The file could not be read (absent, not DICOM, cut short).
    UNREADABLE = "unreadable"
    #: Number of Frames (0028,0008) and the Per-Frame Functional Groups Sequence (5200,9230) disagree.
    NO_FUNCTIONAL_GROUPS = "no_functional_groups"


def _converted(item: Dataset | None, keyword: str, convert: Callable[[Any], _T]) -> _T | None:
    """An attribute of a functional group item, converted; None when absent or unusable."""
    if item is None:
        return None
    try:
        raw = item.get(keyword)
        return None if raw is None or raw == "" else convert(raw)
    except Exception:  # noqa: BLE001 - a malformed value is treated as absent
        return None


def _first_item(container: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of a sequence in ``container``, None when there is none."""
    if container is None:
        return None
    try:
        sequence = container.get(keyword)
        return sequence[0] if sequence else None
    except Exception:  # noqa: BLE001 - a malformed sequence is treated as absent
        return None


@dataclass(frozen=True)
class FunctionalGroups:
    """The Multi-frame Functional Groups of one dataset (PS3.3 C.7.6.16), looked up frame by frame."""

    per_frame: tuple[Dataset, ...]
    shared: Dataset | None

    @classmethod
    def of(cls, dataset: Dataset) -> FunctionalGroups:
        """The Per-Frame (5200,9230) and Shared (5200,9229) Functional Groups of ``dataset``."""
        try:
            per_frame = tuple(dataset.get("PerFrameFunctionalGroupsSequence") or ())
        except Exception:  # noqa: BLE001 - a malformed sequence is treated as absent
            per_frame = ()
        return cls(per_frame=per_frame, shared=_first_item(dataset, "SharedFunctionalGroupsSequence"))

    def item(self, index: int, keyword: str) -> Dataset | None:
        """The item of functional group ``keyword`` that applies to frame ``index`` (from 0).

        A group present for the frame itself takes precedence over the shared one.
        """
        own = _first_item(self.per_frame[index], keyword) if 0 <= index < len(self.per_frame) else None
        return own if own is not None else _first_item(self.shared, keyword)


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


#: Where a frame's trigger time is looked for, in order: (functional group, attribute).
_TRIGGER_TIME_SOURCES: Final = (
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    ("UnassignedPerFrameConvertedAttributesSequence", "TriggerTime"),
    ("UnassignedSharedConvertedAttributesSequence", "TriggerTime"),
)


def _trigger_time(groups: FunctionalGroups, index: int) -> float | None:
    """Nominal Cardiac Trigger Delay Time (0020,9153), else a legacy-converted Trigger Time (0018,1060)."""
    for group, keyword in _TRIGGER_TIME_SOURCES:
        found = _converted(groups.item(index, group), keyword, _finite)
        if found is not None:
            return found
    return None


def _frame_header(header: InstanceHeader, groups: FunctionalGroups, index: int) -> InstanceHeader:
    """``header`` with the geometry and timing of frame ``index`` (from 0)."""
    position = _converted(groups.item(index, "PlanePositionSequence"), "ImagePositionPatient", floats(3))
    orientation = _converted(
        groups.item(index, "PlaneOrientationSequence"), "ImageOrientationPatient", floats(6)
    )
    spacing = _converted(groups.item(index, "PixelMeasuresSequence"), "PixelSpacing", floats(2))
    frame_type = _converted(groups.item(index, "MRImageFrameTypeSequence"), "FrameType", texts)
    acquired = _converted(groups.item(index, "FrameContentSequence"), "FrameAcquisitionDateTime", _dt_time)
    return dataclasses.replace(
        header,
        image_position=(position[0], position[1], position[2]) if position else header.image_position,
        image_orientation=(
            (orientation[0], orientation[1], orientation[2], orientation[3], orientation[4], orientation[5])
            if orientation
            else header.image_orientation
        ),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else header.pixel_spacing,
        trigger_time=_trigger_time(groups, index),
        image_type=frame_type or header.image_type,
        acquisition_time=header.acquisition_time or acquired,
    )


def _dt_time(value: object) -> str | None:
    """A DT value (YYYYMMDDHHMMSS.FFFFFF&ZZXX, PS3.5 6.2) as :func:`dated_time` keeps it, offset dropped
    (:func:`~node.dicom.dates.datetime_of`); None without a time of day or when invalid."""
    moment = datetime_of(value)
    if moment is None or len(_UTC_OFFSET.split(str(value).strip(), maxsplit=1)[0]) <= DA_DIGITS:
        return None
    return dated_time(moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f"))


def _temporal_index(groups: FunctionalGroups, index: int) -> int | None:
    """Temporal Position Index (0020,9128) of frame ``index``, None when absent."""
    return _converted(groups.item(index, "FrameContentSequence"), "TemporalPositionIndex", int)


def split_frames(instance: SpooledInstance, path: Path) -> tuple[SpooledFrame, ...] | FrameProblem:
    """One :class:`SpooledFrame` per frame of a multi-frame instance, read from its file at ``path``.

    Frames come in Temporal Position Index (0020,9128) order where every frame has one, else in frame
    order, so that a cine without trigger times keeps its temporal order. A frame whose functional
    groups lack a value keeps the instance's top-level value (None for a conformant instance), and
    the stack finder skips it for want of geometry. Nothing is raised.
    """
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        count = int(dataset.get("NumberOfFrames") or 0)
    except Exception:  # noqa: BLE001 - pydicom raises many types for bad files
        return FrameProblem.UNREADABLE
    groups = FunctionalGroups.of(dataset)
    if count <= 0 or len(groups.per_frame) != count:
        return FrameProblem.NO_FUNCTIONAL_GROUPS
    temporal = [_temporal_index(groups, index) for index in range(count)]
    order = list(range(count))
    if all(value is not None for value in temporal):
        order.sort(key=lambda index: (temporal[index] or 0, index))
    return tuple(
        SpooledFrame(
            header=_frame_header(instance.header, groups, index), path=instance.path, frame_number=index + 1
        )
        for index in order
    )
