"""The predicted LV masks as DICOM Segmentation (PS3.3 A.51), BINARY, one instance per cardiac phase.

Each instance has two segments (PS3.3 C.8.20.2): 1 = LV blood pool (Tissue / Blood, anatomic region
left ventricle), 2 = LV myocardium (Anatomical Structure / left ventricle myocardium), both AUTOMATIC
with the model as algorithm (CID 7162 "Artificial Intelligence"), over every present slice of the
phase, each frame referencing its source image.

A SEG instance is a spatial stack: highdicom refuses frames at duplicate plane positions, and every
position of a cine stack is imaged once per phase. :func:`build_seg_series` therefore writes one
instance per phase into one SEG series (Instance Number = phase + 1), which together cover every
frame of the stack.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from node import __version__
from node.domain import ModelIdentity
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
from node.reports.sources import sanitised_for_copy, without_patient_name

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


def segment_descriptions(model: ModelIdentity) -> list[hd.seg.SegmentDescription]:
    """The two segments, numbered :data:`BLOOD_POOL_SEGMENT` and :data:`MYOCARDIUM_SEGMENT`."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name, family=ARTIFICIAL_INTELLIGENCE, version=model.version, source=MANUFACTURER
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
    """
    copies = [sanitised_for_copy(dataset) for dataset in datasets]
    frames = {str(dataset.get("FrameOfReferenceUID", "")) for dataset in copies}
    if len(frames) > 1:
        first = copies[0].get("FrameOfReferenceUID")
        if first is None:
            raise ReportError("the first source image has no Frame of Reference UID")
        for dataset in copies[1:]:
            dataset.FrameOfReferenceUID = first
    return copies


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
    content_description: str | None = None,
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

    Raises
    ------
    ReportError
        Shapes disagree, positions repeat, or highdicom refuses the sources.
    """
    if labels.ndim != _FRAME_DIMENSIONS or labels.shape[0] != len(source_datasets) or not source_datasets:
        raise ReportError("labels need one (rows, columns) frame per source image")
    sources = _harmonised(source_datasets)
    stacked = np.stack([labels == classes.blood_pool, labels == classes.myocardium], axis=-1).astype(np.uint8)
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
            segment_descriptions=segment_descriptions(model),
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

    Raises
    ------
    ReportError
        The grid, the labels and the UIDs disagree in shape.
    """
    slices = len(source_datasets_by_cell)
    phases = len(source_datasets_by_cell[0]) if slices else 0
    if labels.shape[:2] != (slices, phases) or len(sop_instance_uids) != phases:
        raise ReportError("labels, source grid and SOP Instance UIDs disagree in slices or phases")
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
                classes=classes,
                model=model,
                series_instance_uid=series_instance_uid,
                sop_instance_uid=sop_instance_uids[phase],
                instance_number=phase + 1,
                now=now,
                content_description=CONTENT_DESCRIPTION.format(phase=phase + 1, phases=phases),
                series_number=series_number,
            )
        )
    return instances
