"""The predicted LV masks as DICOM Segmentation (PS3.3 A.51), BINARY, one instance per cardiac phase.

Each instance has two segments (PS3.3 C.8.20.2): 1 = LV blood pool (Tissue / Blood, anatomic region
left ventricle), 2 = LV myocardium (Anatomical Structure / left ventricle myocardium), both AUTOMATIC
with the model as algorithm (CID 7162 "Artificial Intelligence"), over every present slice of the
phase, each frame referencing its source image.

A SEG instance is a spatial stack: highdicom refuses frames at duplicate plane positions, and every
position of a cine stack is imaged once per phase. :func:`build_seg_series` therefore writes one
instance per phase into one SEG series (Instance Number = phase + 1), which together cover every
frame of the stack.

A stack whose images are frames of a multi-frame instance (Enhanced or Legacy Converted Enhanced MR)
has that instance as its one source image (highdicom takes exactly one multi-frame source; other
instances are further source images); each SEG frame is placed at its source frame's Plane Position
(Patient) and references that frame alone by Referenced Frame Number (0008,1160) in its Derivation
Image Sequence (PS3.3 C.7.6.16.2.6). highdicom establishes such per-frame references only when one
instance holds every slice of the phase: a stack sent as one multi-frame instance per slice gets a
valid SEG whose frames carry none (as a stack of one single-frame series per slice does).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from node import __version__
from node.domain import BasalRule, ModelIdentity, algorithm_parameters
from node.reports.codes import (
    ANATOMICAL_STRUCTURE,
    ARTIFICIAL_INTELLIGENCE,
    BLOOD,
    LEFT_VENTRICLE,
    LV_MYOCARDIUM,
    TISSUE,
)
from node.reports.errors import ReportError
from node.reports.labels import LabelClasses
from node.reports.sources import (
    frame_functional_group,
    image_position,
    sanitised_for_copy,
    without_patient_name,
)

MANUFACTURER: Final = "dicomnode"
#: Device Serial Number (0018,1000) is Type 1 in the Enhanced General Equipment module (PS3.3
#: C.7.5.2); the node is software without a serial number of its own.
DEVICE_SERIAL_NUMBER: Final = "1"
SEG_SERIES_NUMBER: Final = 9904
SERIES_DESCRIPTION: Final = "AI LV segmentation - UNVERIFIED"
#: Content Label (0070,0080), a CS value.
CONTENT_LABEL: Final = "LV_AI_SEG"
CONTENT_DESCRIPTION: Final = "AI LV segmentation, cardiac phase {phase} of {phases}"
BLOOD_POOL_SEGMENT: Final = 1
MYOCARDIUM_SEGMENT: Final = 2
_FRAME_DIMENSIONS: Final = 3


def segment_descriptions(
    model: ModelIdentity, basal_rule: BasalRule | None = None
) -> list[hd.seg.SegmentDescription]:
    """The two segments, numbered :data:`BLOOD_POOL_SEGMENT` and :data:`MYOCARDIUM_SEGMENT`; their
    algorithm's parameters say how the masks were made (:func:`~node.domain.algorithm_parameters`:
    the basal rule clears the LV labels of basal frames that are not ventricle)."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=ARTIFICIAL_INTELLIGENCE,
        version=model.version,
        source=MANUFACTURER,
        parameters=algorithm_parameters(model, basal_rule) or None,
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=BLOOD_POOL_SEGMENT,
            segment_label="LV blood pool",
            segmented_property_category=TISSUE,
            segmented_property_type=BLOOD,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[LEFT_VENTRICLE],
        ),
        hd.seg.SegmentDescription(
            segment_number=MYOCARDIUM_SEGMENT,
            segment_label="LV myocardium",
            segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=LV_MYOCARDIUM,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        ),
    ]


def _harmonised(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Sanitised copies; one Frame of Reference UID for all when the sources disagree.

    Anonymised exports give each image its own Frame of Reference UID (0020,0052), although the
    stack was acquired in one patient coordinate system (the planner groups such a stack by
    geometry and flags it). A SEG has one frame of reference, so the first source image's is used.
    A dataset given several times (a multi-frame instance, once per frame) is copied once.
    """
    copied: dict[int, Dataset] = {}
    for dataset in datasets:
        if id(dataset) not in copied:
            copied[id(dataset)] = sanitised_for_copy(dataset)
    copies = [copied[id(dataset)] for dataset in datasets]
    frames = {str(dataset.get("FrameOfReferenceUID", "")) for dataset in copies}
    if len(frames) > 1:
        first = copies[0].get("FrameOfReferenceUID")
        if first is None:
            raise ReportError("the first source image has no Frame of Reference UID")
        for dataset in copied.values():
            dataset.FrameOfReferenceUID = first
    return copies


#: Functional groups highdicom reads from the Shared Functional Groups Sequence of a multi-frame source.
_SHARED_BY_HIGHDICOM: Final = ("PlaneOrientationSequence", "PixelMeasuresSequence")


def _with_shared_geometry(dataset: Dataset, frame_numbers: Sequence[int]) -> Dataset:
    """A copy of a multi-frame source with Plane Orientation and Pixel Measures as shared groups.

    highdicom reads both from the Shared Functional Groups Sequence (5200,9229) of a multi-frame
    source only; an Enhanced MR may carry them per frame, and an instance holding several stacks
    has several orientations (PS3.3 C.7.6.16). The copy handed to highdicom gets, as shared, the
    value common to the frames segmented (``frame_numbers``); a value already shared is kept.

    Raises
    ------
    ReportError
        The frames segmented differ in orientation or pixel measures.
    """
    result = copy.deepcopy(dataset)
    if not result.get("SharedFunctionalGroupsSequence"):
        result.SharedFunctionalGroupsSequence = [Dataset()]
    shared = result.SharedFunctionalGroupsSequence[0]
    for keyword in _SHARED_BY_HIGHDICOM:
        if keyword in shared:
            continue
        items = [frame_functional_group(result, number, keyword) for number in frame_numbers]
        first = items[0]
        if first is None or any(item != first for item in items):
            raise ReportError(f"the frames segmented differ in {keyword} or lack it")
        setattr(shared, keyword, [copy.deepcopy(first)])
    return result


@dataclass(frozen=True)
class _MultiFrameSources:
    """How a phase's frames of multi-frame instances are handed to highdicom."""

    source: Dataset
    further: list[Dataset]
    plane_positions: list[hd.PlanePositionSequence]
    #: (SOP Instance UID, frame number or None) of every image segmented.
    images: frozenset[tuple[str, int | None]]


def _multi_frame_sources(
    sources: Sequence[Dataset], frame_numbers: Sequence[int | None]
) -> _MultiFrameSources:
    """The multi-frame instance with the most of the frames as the source, the other instances as
    further sources, and each frame's plane position."""
    instances: dict[str, Dataset] = {}
    frames: dict[str, list[int]] = {}
    for dataset, number in zip(sources, frame_numbers, strict=True):
        uid = str(dataset.SOPInstanceUID)
        instances.setdefault(uid, dataset)
        if number is not None:
            frames.setdefault(uid, []).append(number)
    for uid, numbers in frames.items():
        instances[uid] = _with_shared_geometry(instances[uid], numbers)
    main_uid = max(frames, key=lambda uid: len(frames[uid]))
    positions: list[hd.PlanePositionSequence] = []
    for dataset, number in zip(sources, frame_numbers, strict=True):
        position = image_position(dataset, number)
        if position is None:
            raise ReportError("a source image has no Image Position (Patient)")
        positions.append(
            hd.PlanePositionSequence(
                coordinate_system=hd.CoordinateSystemNames.PATIENT, image_position=position
            )
        )
    return _MultiFrameSources(
        source=instances[main_uid],
        further=[dataset for uid, dataset in instances.items() if uid != main_uid],
        plane_positions=positions,
        images=frozenset(
            (str(dataset.SOPInstanceUID), number)
            for dataset, number in zip(sources, frame_numbers, strict=True)
        ),
    )


def _reference_own_frames(seg: Dataset, images: frozenset[tuple[str, int | None]]) -> None:
    """Keep, in each SEG frame's Derivation Image Sequence, only the source frames segmented.

    highdicom matches a SEG frame to every source frame at its plane position; in a cine instance
    those are the position's frames of every phase, but the frame was segmented on one of them.
    """
    for frame in seg.get("PerFrameFunctionalGroupsSequence") or ():
        for derivation in frame.get("DerivationImageSequence") or ():
            items = list(derivation.get("SourceImageSequence") or ())
            kept = [
                item
                for item in items
                if (
                    str(item.ReferencedSOPInstanceUID),
                    int(item.ReferencedFrameNumber) if "ReferencedFrameNumber" in item else None,
                )
                in images
            ]
            if kept and len(kept) < len(items):
                derivation.SourceImageSequence = kept


def build_seg(
    source_datasets: Sequence[Dataset],
    labels: npt.NDArray[np.uint8],
    *,
    classes: LabelClasses,
    model: ModelIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    now: datetime,
    basal_rule: BasalRule | None = None,
    content_description: str | None = None,
    frame_numbers: Sequence[int | None] = (),
    series_number: int = SEG_SERIES_NUMBER,
) -> Dataset:
    """One BINARY SEG instance over frames at distinct positions (one cardiac phase of the stack).

    Parameters
    ----------
    source_datasets
        The source image of each frame, in the order of ``labels`` (headers suffice; highdicom
        reads Rows, Columns, Pixel Spacing, Image Position/Orientation (Patient) and the UIDs).
    labels
        ``(frames, rows, columns)`` label values on the source grid.
    classes
        Which label values are the blood pool and the myocardium.
    now
        Content and instance creation date/time.
    basal_rule
        The rule the labels were measured by (with the model's hashes, the algorithm's parameters);
        None where it is not recorded.
    frame_numbers
        Per source image, its frame number when it is a frame of a multi-frame instance (None for a
        single-frame image; ``source_datasets`` then holds that instance once per frame); empty when
        every image is single-frame.

    Raises
    ------
    ReportError
        Shapes disagree, positions repeat, or highdicom refuses the sources.
    """
    if labels.ndim != _FRAME_DIMENSIONS or labels.shape[0] != len(source_datasets) or not source_datasets:
        raise ReportError("labels need one (rows, columns) frame per source image")
    if frame_numbers and len(frame_numbers) != len(source_datasets):
        raise ReportError("frame numbers need one entry per source image")
    sources = _harmonised(source_datasets)
    stacked = np.stack([labels == classes.blood_pool, labels == classes.myocardium], axis=-1).astype(np.uint8)
    multi_frame = (
        _multi_frame_sources(sources, frame_numbers)
        if any(number is not None for number in frame_numbers)
        else None
    )
    plane_positions: list[hd.PlanePositionSequence] | None
    if multi_frame is not None:
        main, further = [multi_frame.source], multi_frame.further
        plane_positions = multi_frame.plane_positions
    else:
        series = Counter(str(dataset.SeriesInstanceUID) for dataset in sources)
        main_series = series.most_common(1)[0][0]
        main = [dataset for dataset in sources if str(dataset.SeriesInstanceUID) == main_series]
        further = [dataset for dataset in sources if str(dataset.SeriesInstanceUID) != main_series]
        # A stack with one series per slice: frames are placed by position; highdicom references the
        # main series frame by frame and lists the other series as further source images.
        plane_positions = (
            [
                hd.PlanePositionSequence(
                    coordinate_system=hd.CoordinateSystemNames.PATIENT,
                    image_position=[float(value) for value in dataset.ImagePositionPatient],
                )
                for dataset in sources
            ]
            if further
            else None
        )
    try:
        seg = hd.seg.Segmentation(
            source_images=[without_patient_name(main[0]), *main[1:]],
            pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(model, basal_rule),
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=__version__,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            plane_positions=plane_positions,
            further_source_images=further or None,
            omit_empty_frames=False,
            content_label=CONTENT_LABEL,
            content_description=content_description,
            series_description=SERIES_DESCRIPTION,
            content_date=now.date(),
            content_time=now.time(),
            series_date=now.date(),
            series_time=now.time(),
        )
    except ValueError as error:
        raise ReportError(f"highdicom refused the segmentation: {error}") from None
    if multi_frame is not None:
        _reference_own_frames(seg, multi_frame.images)
    seg.copy_patient_and_study_information(main[0])
    seg.InstanceCreationDate = DA(now.date())
    seg.InstanceCreationTime = TM(now.time())
    return seg


def build_seg_series(
    source_datasets_by_cell: Sequence[Sequence[Dataset | None]],
    labels: npt.NDArray[np.uint8],
    *,
    classes: LabelClasses,
    model: ModelIdentity,
    series_instance_uid: str,
    sop_instance_uids: Sequence[str],
    now: datetime,
    basal_rule: BasalRule | None = None,
    frame_numbers_by_cell: Sequence[Sequence[int | None]] = (),
    series_number: int = SEG_SERIES_NUMBER,
) -> list[Dataset]:
    """SEG instances covering every present cell of a stack: one per cardiac phase, in one series.

    Parameters
    ----------
    source_datasets_by_cell
        ``[slice][phase]`` source headers (None for a missing cell), as
        :func:`node.reports.sources.load_stack_headers` returns them.
    labels
        ``(slices, phases, rows, columns)`` labels, as :class:`node.pipeline.measure.MeasuredStack`
        holds them.
    sop_instance_uids
        One SOP Instance UID per phase; a phase without any image is skipped.
    frame_numbers_by_cell
        ``[slice][phase]`` frame numbers of cells that are frames of a multi-frame instance, as
        :func:`node.reports.sources.stack_frame_numbers` returns them; empty when every image is
        single-frame.

    Raises
    ------
    ReportError
        The grid, the labels and the UIDs disagree in shape.
    """
    slices = len(source_datasets_by_cell)
    phases = len(source_datasets_by_cell[0]) if slices else 0
    if labels.shape[:2] != (slices, phases) or len(sop_instance_uids) != phases:
        raise ReportError("labels, source grid and SOP Instance UIDs disagree in slices or phases")
    if frame_numbers_by_cell and [len(row) for row in frame_numbers_by_cell] != [phases] * slices:
        raise ReportError("frame numbers and source grid disagree in slices or phases")
    instances: list[Dataset] = []
    for phase in range(phases):
        cells = [(index, row[phase]) for index, row in enumerate(source_datasets_by_cell)]
        present = [(index, dataset) for index, dataset in cells if dataset is not None]
        if not present:
            continue
        instances.append(
            build_seg(
                [dataset for _, dataset in present],
                labels[[index for index, _ in present], phase],
                frame_numbers=[frame_numbers_by_cell[index][phase] for index, _ in present]
                if frame_numbers_by_cell
                else (),
                classes=classes,
                model=model,
                basal_rule=basal_rule,
                series_instance_uid=series_instance_uid,
                sop_instance_uid=sop_instance_uids[phase],
                instance_number=phase + 1,
                now=now,
                content_description=CONTENT_DESCRIPTION.format(phase=phase + 1, phases=phases),
                series_number=series_number,
            )
        )
    return instances
