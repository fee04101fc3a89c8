"""Coded concepts of the node's reports (PS3.16), and the node's private coding scheme.

Standard codes are cited with the context group (CID) of PS3.16 that lists them. Concepts the
standard has no code for (the radiologist review status, the QC flags, the AI confidence) use the
private coding scheme :data:`SCHEME` ("99" prefix, PS3.16 Section 8.2), which every SR declares in its
Coding Scheme Identification Sequence (0008,0110), PS3.3 C.12.1.1.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, TypeVar

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from node.domain import QcStatus
from node.inference.qc import QcFlag

#: Private coding scheme designator of the node (PS3.16 8.2: private designators begin with "99").
SCHEME: Final = "99DCMNODE"
SCHEME_NAME: Final = "dicomnode private codes"
SCHEME_ORGANIZATION: Final = "dicomnode project"
#: CodeMeaning (0008,0104) is LO: at most 64 characters.
_CODE_MEANING_CHARS: Final = 64

# --- Measurements (TID 300 concept names) -----------------------------------------------------
#: CID 3835 "Cardiovascular ... Volume" / CID 3468: LV volume at end diastole.
LVEDV: Final = Code("8821-1", "LN", "Left Ventricular ED Volume")
#: CID 3835 / CID 3469: LV volume at end systole.
LVESV: Final = Code("8823-7", "LN", "Left Ventricular ES Volume")
#: CID 3833 "Ejection Fraction": left ventricular ejection fraction measured by MR.
LVEF_MR: Final = Code("8811-2", "LN", "Left ventricular ejection fraction by MR")
#: CID 3835 / CID 12200: stroke volume (SNOMED CT 90096001).
STROKE_VOLUME: Final = Code("90096001", "SCT", "Stroke Volume")
#: CID 12200 "Echocardiography Left Ventricle" and CID 12203: LOINC 18087-7 "Left ventricular Mass".
#: LOINC gives no method for it, so it fits a myocardial mass from MR (myocardial volume at ED x
#: 1.05 g/mL); PS3.16 has no MR-specific LV mass code.
LV_MASS: Final = Code("18087-7", "LN", "Left Ventricle Mass")
#: Private: the model's confidence in its result, 0 (none) to 1 (clean, certain segmentation).
AI_CONFIDENCE: Final = Code("AI-CONFIDENCE", SCHEME, "AI result confidence")

# --- Context ----------------------------------------------------------------------------------
#: CID 12305 / CID 7151 (SNOMED CT "Left ventricular structure"): finding site of every measurement.
LEFT_VENTRICLE: Final = Code("87878005", "SCT", "Left ventricle")
#: CID 100 "Quantitative Diagnostic Imaging Procedures" / CID 3757: procedure reported in TID 1500.
CARDIAC_MRI: Final = Code("241620005", "SCT", "Cardiac MRI")
#: CID 7162 "Algorithm Family": the family of the segmentation model (SEG algorithm identification).
ARTIFICIAL_INTELLIGENCE: Final = Code("123110", "DCM", "Artificial Intelligence")
#: TID 1501 row "Qualitative Evaluations" of value type TEXT (EV C00034375, UMLS): free-text
#: statements (QC explanations, the reason for an amendment or a rejection).
QUALITATIVE_EVALUATIONS: Final = Code("C00034375", "UMLS", "Qualitative Evaluations")

# --- Units (UCUM, CID 7181 and CID 82) ---------------------------------------------------------
MILLILITER: Final = Code("ml", "UCUM", "milliliter")
PERCENT: Final = Code("%", "UCUM", "Percent")
GRAM: Final = Code("g", "UCUM", "gram")
NO_UNITS: Final = Code("1", "UCUM", "no units")

# --- Segmentation (PS3.3 C.8.20.2 Segment Description; CID 7150 categories, CID 7151 types) -----
#: CID 7150 "Segmentation Property Categories".
TISSUE: Final = Code("85756007", "SCT", "Tissue")
ANATOMICAL_STRUCTURE: Final = Code("91723000", "SCT", "Anatomical Structure")
#: CID 7166 "Common Tissue Segmentation Types": the LV blood pool is blood, in the left ventricle.
BLOOD: Final = Code("87612001", "SCT", "Blood")
#: CID 12305 (SNOMED CT "Structure of myocardium of left ventricle").
LV_MYOCARDIUM: Final = Code("49848007", "SCT", "Left Ventricle Myocardium")


class ReviewStatus(StrEnum):
    """Where a result stands in radiologist review; coded by :data:`REVIEW_STATUS_CODES`."""

    #: The draft the node sends: nobody has looked at it yet.
    PENDING = "pending_review"
    #: A radiologist accepted the AI result as it is.
    SIGNED_OFF = "signed_off"
    #: A radiologist corrected EDV/ESV; EF and SV were derived from the corrected volumes.
    AMENDED = "amended"
    #: A radiologist rejected the AI result.
    REJECTED = "rejected"


#: Private concept name of the coded review-status item in the measurement group.
REVIEW_STATUS: Final = Code("RVW-STATUS", SCHEME, "Radiologist review status")
REVIEW_STATUS_CODES: Final = {
    ReviewStatus.PENDING: Code("RVW-PENDING", SCHEME, "Pending radiologist review"),
    ReviewStatus.SIGNED_OFF: Code("RVW-SIGNED", SCHEME, "Signed off"),
    ReviewStatus.AMENDED: Code("RVW-AMENDED", SCHEME, "Amended"),
    ReviewStatus.REJECTED: Code("RVW-REJECTED", SCHEME, "Rejected"),
}

#: Private concept name of each coded QC flag in the measurement group.
QC_FLAG: Final = Code("QC-FLAG", SCHEME, "AI quality control flag")
#: The value of :data:`QC_FLAG` when QC raised nothing, so "no flags" is stated, not implied.
QC_NONE: Final = Code("QC-NONE", SCHEME, "No quality control flag raised")
#: One code per :class:`~node.inference.qc.QcFlag` (from its table); the meaning doubles as the short
#: on-image text.
QC_FLAG_CODES: Final = {flag: Code(flag.info.code, SCHEME, flag.info.meaning) for flag in QcFlag}


#: Private concept name of the coded QC status in the measurement group, and its two values.
QC_STATUS: Final = Code("QC-STATUS", SCHEME, "AI quality control status")
QC_STATUS_CODES: Final = {
    QcStatus.OK: Code("QC-OK", SCHEME, "No check asked for by quality control"),
    QcStatus.CHECK: Code("QC-CHECK", SCHEME, "Check this result: quality control"),
}


_M = TypeVar("_M")


def _member_of(codes: Mapping[_M, Code], value: str, what: str) -> _M:
    """The member whose code has ``value``; ValueError for a value none has."""
    for member, code in codes.items():
        if code.value == value:
            return member
    raise ValueError(f"unknown {what} code {value!r}")


def qc_status_of(value: str) -> QcStatus:
    """The :class:`~node.domain.QcStatus` a :data:`QC_STATUS` code value stands for (ValueError for
    another value)."""
    return _member_of(QC_STATUS_CODES, value, "QC status")


def qc_flag_code(flag: str) -> Code:
    """The code of a QC flag; a flag without a curated code keeps its name as the code value.

    A name longer than 16 characters is encoded by highdicom as Long Code Value (0008,0119).
    """
    known = QcFlag._value2member_map_.get(flag)
    if isinstance(known, QcFlag):
        return QC_FLAG_CODES[known]
    return Code(flag, SCHEME, flag.replace("_", " ")[:_CODE_MEANING_CHARS])


def qc_flag_of(value: str) -> str:
    """The QC flag name of a :data:`QC_FLAG` code value (inverse of :func:`qc_flag_code`)."""
    for flag, code in QC_FLAG_CODES.items():
        if code.value == value:
            return flag
    return value


def review_status_of(value: str) -> ReviewStatus:
    """The :class:`ReviewStatus` a :data:`REVIEW_STATUS` code value stands for (ValueError for another
    value)."""
    return _member_of(REVIEW_STATUS_CODES, value, "review status")


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """A fresh Coding Scheme Identification Sequence item declaring :data:`SCHEME` (PS3.3 C.12.1.1.5)."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME, name=SCHEME_NAME, responsible_organization=SCHEME_ORGANIZATION
    )
