"""The summary page as a Secondary Capture Image (PS3.3 A.8.1), filed in the source study.

The pixels come from :func:`node.reports.render.render_summary`; text is burned in, so Burned In
Annotation (0028,0301) is YES. Patient and study attributes are copied from a sanitised source image
(:func:`node.reports.sources.sanitised_for_copy`), the Study Instance UID exactly as the source has it.
The frames drawn are listed in the Source Image Sequence (0008,2112), a frame of a multi-frame
source with its Referenced Frame Number (0008,1160).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from node import __version__
from node.reports.codes import ReviewStatus
from node.reports.errors import ReportError
from node.reports.sources import image_orientation as orientation_of
from node.reports.sources import sanitised_for_copy

MANUFACTURER: Final = "dicomnode"
SC_SERIES_NUMBER: Final = 9903
SERIES_DESCRIPTIONS: Final = {
    ReviewStatus.PENDING: "AI LV volumes summary - UNVERIFIED",
    ReviewStatus.SIGNED_OFF: "AI LV volumes summary - VERIFIED",
    ReviewStatus.AMENDED: "LV volumes summary - VERIFIED, AMENDED",
    ReviewStatus.REJECTED: "AI LV volumes summary - REJECTED",
}
DERIVATION_DESCRIPTION: Final = (
    "Summary of an AI measurement of the left ventricle: mid-ventricular ED and ES frames with "
    "predicted contours, LV volume curve, measurements, QC flags and sign-off status."
)
#: Burned In Annotation (0028,0301): the page carries text.
BURNED_IN_ANNOTATION: Final = "YES"
#: Image Laterality (0020,0062) "U" (unpaired): the heart is not a paired structure, so the General
#: Series Laterality (0020,0060), Type 2C, is not required (PS3.3 C.7.3.1, C.7.6.1).
IMAGE_LATERALITY_UNPAIRED: Final = "U"
#: Body Part Examined (0018,0015), defined term of PS3.16 Annex L.
BODY_PART_EXAMINED: Final = "HEART"
_RGB_CHANNELS: Final = 3
_BITS_ALLOCATED: Final = 8
#: Patient-based axes (PS3.3 C.7.6.1.1.1): letter for the positive and negative direction of x, y, z.
_AXIS_LETTERS: Final = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(image_orientation: Sequence[float]) -> tuple[str, str]:
    """Patient Orientation (0020,0020) of the displayed frames: the dominant axis of row and column.

    Parameters
    ----------
    image_orientation
        Image Orientation (Patient) (0020,0037) of the source frame: row then column cosines.
    """
    if len(image_orientation) != 2 * _RGB_CHANNELS:
        raise ReportError("Image Orientation (Patient) needs six values")
    letters: list[str] = []
    for vector in (image_orientation[:3], image_orientation[3:]):
        axis = int(np.argmax(np.abs(vector)))
        positive, negative = _AXIS_LETTERS[axis]
        letters.append(positive if vector[axis] >= 0 else negative)
    return letters[0], letters[1]


def build_sc(
    rgb: npt.NDArray[np.uint8],
    source_dataset: Dataset,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    review: ReviewStatus,
    now: datetime,
    source_frame_number: int | None = None,
    referenced_images: Sequence[Dataset] = (),
    referenced_frame_numbers: Sequence[int | None] = (),
    series_number: int = SC_SERIES_NUMBER,
) -> Dataset:
    """The rendered page as a Secondary Capture Image Storage instance (highdicom ``SCImage``).

    Parameters
    ----------
    rgb
        ``(rows, columns, 3)`` uint8 RGB pixels.
    source_dataset
        A source image of the stack (the mid-ventricular ED image): Study Instance UID, patient and
        study modules, and the Image Orientation (Patient) behind Patient Orientation.
    series_instance_uid, sop_instance_uid, instance_number, series_number
        Identity of the new instance.
    review
        Sign-off status of the result shown; it names the series (Series Description).
    now
        Content date/time, date/time of secondary capture and instance creation.
    source_frame_number
        When ``source_dataset`` is a multi-frame instance, the frame drawn: its Plane Orientation
        (Patient) functional group gives the orientation. None for a single-frame source.
    referenced_images
        Images drawn on the page, listed in the Source Image Sequence (0008,2112), each instance once.
    referenced_frame_numbers
        Per referenced image, its frame number in a multi-frame instance (None for a single-frame
        image), listed in that instance's Referenced Frame Number (0008,1160); empty when every image
        is single-frame.

    Raises
    ------
    ReportError
        ``rgb`` is not an RGB uint8 image, the source has no usable orientation, or the referenced
        frame numbers do not pair with the referenced images.
    """
    if rgb.ndim != _RGB_CHANNELS or rgb.shape[2] != _RGB_CHANNELS or rgb.dtype != np.uint8:
        raise ReportError("the secondary capture needs an RGB uint8 image")
    if referenced_frame_numbers and len(referenced_frame_numbers) != len(referenced_images):
        raise ReportError("referenced frame numbers and referenced images differ in number")
    source = sanitised_for_copy(source_dataset)
    orientation = orientation_of(source, source_frame_number)
    if orientation is None:
        raise ReportError("the source image has no Image Orientation (Patient)")
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=_BITS_ALLOCATED,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=patient_orientation(orientation),
        series_description=SERIES_DESCRIPTIONS[review],
        software_versions=__version__,
        content_date=now.date(),
        content_time=now.time(),
        series_date=now.date(),
        series_time=now.time(),
    )
    # highdicom's constructor refuses a Patient's Name without '^' (valid PN, but a "likely error");
    # the source's patient and study modules are copied as they are instead.
    sc.copy_patient_and_study_information(source)
    sc.BurnedInAnnotation = BURNED_IN_ANNOTATION
    sc.ImageLaterality = IMAGE_LATERALITY_UNPAIRED
    sc.BodyPartExamined = BODY_PART_EXAMINED
    sc.DerivationDescription = DERIVATION_DESCRIPTION
    sc.DateOfSecondaryCapture = DA(now.date())
    sc.TimeOfSecondaryCapture = TM(now.time())
    sc.InstanceCreationDate = DA(now.date())
    sc.InstanceCreationTime = TM(now.time())
    if referenced_images:
        sc.SourceImageSequence = _source_image_items(referenced_images, referenced_frame_numbers)
    return sc


def _source_image_items(images: Sequence[Dataset], frame_numbers: Sequence[int | None]) -> list[Dataset]:
    """Source Image Sequence items (Image SOP Instance Reference Macro, PS3.3 Table 10-3), one per
    instance, with the Referenced Frame Number (0008,1160) of each frame drawn from a multi-frame one."""
    items: dict[str, Dataset] = {}
    frames: dict[str, list[int]] = {}
    for position, image in enumerate(images):
        uid = str(image.SOPInstanceUID)
        if uid not in items:
            item = Dataset()
            item.ReferencedSOPClassUID = image.SOPClassUID
            item.ReferencedSOPInstanceUID = image.SOPInstanceUID
            items[uid], frames[uid] = item, []
        number = frame_numbers[position] if frame_numbers else None
        if number is not None and number not in frames[uid]:
            frames[uid].append(number)
    for uid, numbers in frames.items():
        if numbers:
            items[uid].ReferencedFrameNumber = numbers
    return list(items.values())
