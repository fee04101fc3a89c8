"""Structured Reports of a measured stack: the UNVERIFIED draft, and the VERIFIED successor after review.

Both are Comprehensive 3D SR documents (PS3.3 A.35.13) whose content is a TID 1500 Measurement
Report with one TID 1501 measurement group for the short-axis stack: LVEDV, LVESV, LVEF, SV and LV
mass (TID 300, UCUM units), each referencing the source images it was measured on (one IMAGE item
per instance; for a multi-frame instance, with the Referenced Frame Numbers of the frames used, as
the Image Reference Macro requires, PS3.3 C.18.4 and Table 10-3); finding site left
ventricle; TID 4019 algorithm identification; the QC flags and the radiologist review status as
coded qualitative evaluations; free-text statements as TEXT qualitative evaluations.

Sign-off follows the SR Document General Module (PS3.3 C.17.2): the draft is UNVERIFIED,
PRELIMINARY and PARTIAL (its review is pending, so the document is not complete); a sign-off, an
amendment or a rejection is a new SOP Instance that is VERIFIED, FINAL and COMPLETE, names its
Verifying Observer and references the draft in the Predecessor Documents Sequence (0040,A360).
highdicom does not make VERIFIED imply COMPLETE; :func:`check_sign_off_flags` does.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Final

import highdicom as hd
from highdicom.sr.templates import Template
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from node import __version__
from node.domain import (
    ModelIdentity,
    QcStatus,
    StackResult,
    algorithm_parameters,
    ejection_fraction,
    stroke_volume,
)
from node.inference.qc import flag_text, qc_statement
from node.reports.codes import (
    AI_CONFIDENCE,
    CARDIAC_MRI,
    GRAM,
    LEFT_VENTRICLE,
    LV_MASS,
    LVEDV,
    LVEF_MR,
    LVESV,
    MILLILITER,
    NO_UNITS,
    PERCENT,
    QC_FLAG,
    QC_NONE,
    QC_STATUS,
    QC_STATUS_CODES,
    QUALITATIVE_EVALUATIONS,
    REVIEW_STATUS,
    REVIEW_STATUS_CODES,
    STROKE_VOLUME,
    ReviewStatus,
    coding_scheme_identification,
    qc_flag_code,
    qc_flag_of,
    qc_status_of,
    review_status_of,
)
from node.reports.errors import ReportError
from node.reports.sources import TYPE2_COPIED, sanitised_for_copy, without_patient_name

MANUFACTURER: Final = "dicomnode"
#: Series Number (0020,0011) of the draft SR series and of the verified SR series.
DRAFT_SR_SERIES_NUMBER: Final = 9901
VERIFIED_SR_SERIES_NUMBER: Final = 9902
#: Series Description (0008,103E): what a PACS user sees in the series list before opening it.
DRAFT_SERIES_DESCRIPTION: Final = "AI LV volumes - UNVERIFIED"
VERIFIED_SERIES_DESCRIPTIONS: Final = {
    ReviewStatus.SIGNED_OFF: "AI LV volumes - VERIFIED",
    ReviewStatus.AMENDED: "LV volumes - VERIFIED, AMENDED by radiologist",
    ReviewStatus.REJECTED: "AI LV volumes - REJECTED by radiologist",
}
#: Tracking Identifier (TID 4108) of the stack's measurement group.
TRACKING_IDENTIFIER: Final = "LV volumes, short-axis cine stack"
#: Namespace of the name-based UUIDs (ISO/IEC 9834-8) behind the node's derived UIDs (PS3.5 B.2).
UID_NAMESPACE: Final = uuid.UUID("6f1d0c3e-8f5a-5b0e-9a53-2f7d6c1e4b90")
#: Decimal places kept for volumes (mL), mass (g) and EF (%); more would be false precision.
VALUE_DECIMALS: Final = 1
CONFIDENCE_DECIMALS: Final = 3
#: PN component separator (PS3.5 6.2.1): "Family^Given".
PN_COMPONENT_SEPARATOR: Final = "^"
#: LO (PS3.5 6.2) holds at most 64 characters.
LO_MAX_CHARS: Final = 64

PENDING_STATEMENT: Final = (
    "AI result pending radiologist review: not verified, not for clinical decisions until signed off."
)
AMENDED_STATEMENT: Final = (
    "EDV and ESV amended by the radiologist (AI values: EDV {edv:.1f} mL, ESV {esv:.1f} mL); "
    "EF and SV are derived from the amended volumes. LV mass is the AI value."
)
REJECTED_STATEMENT: Final = (
    "AI result rejected by the radiologist: its measurements are withdrawn "
    "(they remain in the predecessor draft for the record)."
)
REASON_PREFIX: Final = {
    ReviewStatus.AMENDED: "Reason for amendment: ",
    ReviewStatus.REJECTED: "Reason for rejection: ",
    ReviewStatus.SIGNED_OFF: "Radiologist comment: ",
}


class VerificationFlag(StrEnum):
    """Verification Flag (0040,A493), PS3.3 C.17.2.1."""

    UNVERIFIED = "UNVERIFIED"
    VERIFIED = "VERIFIED"


class PreliminaryFlag(StrEnum):
    """Preliminary Flag (0040,A496), PS3.3 C.17.2.1."""

    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"


class CompletionFlag(StrEnum):
    """Completion Flag (0040,A491), PS3.3 C.17.2.1."""

    PARTIAL = "PARTIAL"
    COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class VerifyingObserver:
    """The radiologist who verifies a result (Verifying Observer Sequence item, PS3.3 C.17.2.1).

    Attributes
    ----------
    name
        Verifying Observer Name (0040,A075), a PN value such as ``"Smith^Jane"``.
    organization
        Verifying Organization (0040,A027).
    identification_code
        Verifying Observer Identification Code (0040,A088), e.g. a staff number as a code; None
        when not known (the sequence is Type 2 and is then left empty).
    """

    name: str
    organization: str
    identification_code: Code | None = None


@dataclass(frozen=True)
class ImageReference:
    """A referenced image: SOP Class UID and SOP Instance UID, exactly as the source has them.

    ``frame_numbers`` are the Referenced Frame Numbers (0008,1160) of a multi-frame instance the
    reference applies to; empty for a single-frame image.
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReportedValues:
    """The numbers of a measurement group; volumes in mL, EF in %, mass in g, confidence 0-1."""

    edv_ml: float
    esv_ml: float
    ef_pct: float
    sv_ml: float
    lv_mass_g: float
    confidence: float


@dataclass(frozen=True)
class ReportContent:
    """What an SR of this module states, read back from its content tree (see :func:`read_report`).

    ``values`` is None for a rejected result (its measurements are withdrawn).
    """

    model: ModelIdentity
    tracking_uid: str
    values: ReportedValues | None
    review: ReviewStatus
    #: None in an SR a node wrote before QC 2.
    qc_status: QcStatus | None
    qc_flags: tuple[str, ...]
    statements: tuple[str, ...]
    ed_images: tuple[ImageReference, ...]
    es_images: tuple[ImageReference, ...]
    #: TID 4019 Algorithm Parameters: how the volumes were measured (:func:`stated_parameters`);
    #: empty in an SR a node wrote before it stated them.
    algorithm_parameters: tuple[str, ...] = ()


def stated_parameters(result: StackResult) -> tuple[str, ...]:
    """The SR's Algorithm Parameters of a result (:func:`~node.domain.algorithm_parameters`), each
    as ``name=value``."""
    parameters = algorithm_parameters(result.model, result.basal_rule)
    return tuple(f"{name}={value}" for name, value in parameters.items())


class _TextEvaluation(hd.sr.QualitativeEvaluation):
    """TID 1501 row "Qualitative Evaluations" of value type TEXT (EV C00034375, UMLS).

    highdicom's :class:`~highdicom.sr.QualitativeEvaluation` covers the CODE row only; this is the
    same row of the template with a TEXT value, passed through the same typed constructor.
    """

    def __init__(self, text: str) -> None:
        item = hd.sr.TextContentItem(
            name=QUALITATIVE_EVALUATIONS,
            value=text,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        Template.__init__(self, [item])


def derived_uid(*parts: str) -> str:
    """A UUID-derived UID (PS3.5 B.2) that is the same whenever ``parts`` are the same."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(0).join(parts)).int}"


def _device_observer(model: ModelIdentity) -> hd.sr.ObserverContext:
    """TID 1002/1004: the node running the model is the device observer of the measurements."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(MANUFACTURER, model.name, model.version),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{model.name} {model.version}"[:LO_MAX_CHARS],
        ),
    )


def _person_observer(observer: VerifyingObserver) -> hd.sr.ObserverContext:
    """TID 1002/1003: the verifying radiologist as person observer."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=observer.name, organization_name=observer.organization
        ),
    )


def _sources(references: Sequence[ImageReference]) -> list[hd.sr.SourceImageForMeasurement]:
    return [
        hd.sr.SourceImageForMeasurement(
            referenced_sop_class_uid=reference.sop_class_uid,
            referenced_sop_instance_uid=reference.sop_instance_uid,
            referenced_frame_numbers=list(reference.frame_numbers) or None,
        )
        for reference in references
    ]


def _merged(*groups: Sequence[ImageReference]) -> list[ImageReference]:
    """The references of ``groups`` with each instance once, its frame numbers joined in order."""
    merged: dict[str, ImageReference] = {}
    for reference in (reference for group in groups for reference in group):
        known = merged.get(reference.sop_instance_uid)
        if known is None:
            merged[reference.sop_instance_uid] = reference
        else:
            extra = tuple(number for number in reference.frame_numbers if number not in known.frame_numbers)
            merged[reference.sop_instance_uid] = replace(known, frame_numbers=known.frame_numbers + extra)
    return list(merged.values())


def _measurements(
    values: ReportedValues,
    ed_images: Sequence[ImageReference],
    es_images: Sequence[ImageReference],
    *,
    amended: bool,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.Measurement]:
    """TID 300 measurements. Amended volumes (and EF/SV derived from them) carry no algorithm id."""
    algorithm = algorithm_id if amended else None
    both = _merged(ed_images, es_images)

    def num(
        name: Code, value: float, unit: Code, images: Sequence[ImageReference], *, ai: bool
    ) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=name,
            value=value,
            unit=unit,
            referenced_images=_sources(images) or None,
            algorithm_id=algorithm if ai else None,
        )

    return [
        num(LVEDV, values.edv_ml, MILLILITER, ed_images, ai=False),
        num(LVESV, values.esv_ml, MILLILITER, es_images, ai=False),
        num(LVEF_MR, values.ef_pct, PERCENT, both, ai=False),
        num(STROKE_VOLUME, values.sv_ml, MILLILITER, both, ai=False),
        num(LV_MASS, values.lv_mass_g, GRAM, ed_images, ai=True),
        num(AI_CONFIDENCE, values.confidence, NO_UNITS, [], ai=True),
    ]


def _measurement_group(
    content: ReportContent, *, amended: bool
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group of the stack."""
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        hd.sr.QualitativeEvaluation(name=REVIEW_STATUS, value=REVIEW_STATUS_CODES[content.review])
    ]
    if content.qc_status is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=QC_STATUS, value=QC_STATUS_CODES[content.qc_status])
        )
    flags = content.qc_flags
    evaluations.extend(hd.sr.QualitativeEvaluation(name=QC_FLAG, value=qc_flag_code(flag)) for flag in flags)
    if not flags:
        evaluations.append(hd.sr.QualitativeEvaluation(name=QC_FLAG, value=QC_NONE))
    evaluations.extend(_TextEvaluation(text) for text in content.statements)
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=content.model.name,
        version=content.model.version,
        parameters=content.algorithm_parameters or None,
    )
    measurements = (
        _measurements(
            content.values, content.ed_images, content.es_images, amended=amended, algorithm_id=algorithm_id
        )
        if content.values is not None
        else None
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=content.tracking_uid, identifier=TRACKING_IDENTIFIER
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=LEFT_VENTRICLE)],
        algorithm_id=None if amended else algorithm_id,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _report(
    content: ReportContent, *, amended: bool, person: VerifyingObserver | None
) -> hd.sr.MeasurementReport:
    """TID 1500 with the observation context (device, and the verifying radiologist when known)."""
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=_person_observer(person) if person is not None else None,
            observer_device_context=_device_observer(content.model),
        ),
        procedure_reported=CARDIAC_MRI,
        imaging_measurements=[_measurement_group(content, amended=amended)],
    )


def _stamp(dataset: Dataset, when: datetime) -> None:
    """Instance Creation Date/Time (PS3.3 C.12.1) from the injected clock, not highdicom's."""
    dataset.InstanceCreationDate = DA(when.date())
    dataset.InstanceCreationTime = TM(when.time())


def check_sign_off_flags(dataset: Dataset) -> None:
    """Refuse an SR whose sign-off attributes contradict each other (PS3.3 C.17.2.1).

    VERIFIED requires COMPLETE, FINAL and a Verifying Observer Sequence item with name, organization
    and date-time; UNVERIFIED must have no Verifying Observer.

    Raises
    ------
    ReportError
        The flags or the observer are inconsistent.
    """
    verification = str(dataset.get("VerificationFlag", ""))
    observers = list(dataset.get("VerifyingObserverSequence") or [])
    if verification == VerificationFlag.VERIFIED:
        if str(dataset.get("CompletionFlag", "")) != CompletionFlag.COMPLETE:
            raise ReportError("a VERIFIED SR must be COMPLETE")
        if str(dataset.get("PreliminaryFlag", "")) != PreliminaryFlag.FINAL:
            raise ReportError("a VERIFIED SR must be FINAL")
        if not observers or not all(
            str(item.get("VerifyingObserverName") or "").strip()
            and str(item.get("VerifyingOrganization") or "").strip()
            and str(item.get("VerificationDateTime") or "").strip()
            for item in observers
        ):
            raise ReportError("a VERIFIED SR needs a named Verifying Observer, organization and date-time")
    elif verification == VerificationFlag.UNVERIFIED:
        if observers:
            raise ReportError("an UNVERIFIED SR must not name a Verifying Observer")
    else:
        raise ReportError("Verification Flag is neither VERIFIED nor UNVERIFIED")


def _rounded(value: float, decimals: int = VALUE_DECIMALS) -> float:
    return round(float(value), decimals)


def _references(
    uids: Sequence[str | None],
    frame_numbers: Sequence[int | None],
    by_uid: dict[str, Dataset],
    phase: str,
) -> tuple[ImageReference, ...]:
    """One reference per instance holding a slice's image of the phase, with its frames' numbers."""
    if frame_numbers and len(frame_numbers) != len(uids):
        raise ReportError(f"frame numbers and images of the {phase} phase differ in number of slices")
    frames: dict[str, list[int]] = {}
    for index, uid in enumerate(uids):
        if uid is None:
            continue
        if uid not in by_uid:
            raise ReportError(f"evidence lacks a source image of the {phase} phase")
        numbers = frames.setdefault(uid, [])
        number = frame_numbers[index] if frame_numbers else None
        if number is not None and number not in numbers:
            numbers.append(number)
    return tuple(
        ImageReference(
            str(by_uid[uid].SOPClassUID), str(by_uid[uid].SOPInstanceUID), frame_numbers=tuple(numbers)
        )
        for uid, numbers in frames.items()
    )


def build_draft_sr(
    result: StackResult,
    evidence_datasets: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    now: datetime,
    ed_frame_numbers: Sequence[int | None] = (),
    es_frame_numbers: Sequence[int | None] = (),
    series_number: int = DRAFT_SR_SERIES_NUMBER,
) -> Dataset:
    """The draft SR the node sends with every result: UNVERIFIED, PRELIMINARY, PARTIAL.

    Parameters
    ----------
    result
        The measured stack.
    evidence_datasets
        Headers (pixel data not needed) of the images at the ED and ES phases, as
        :attr:`node.reports.sources.ReportSources.evidence` gives them; the first supplies the
        Patient and Study modules (sanitised copies, see
        :func:`node.reports.sources.sanitised_for_copy`). Every ED/ES SOP Instance UID of the
        result must be among them.
    series_instance_uid, sop_instance_uid, instance_number, series_number
        Identity of the new SR instance.
    now
        Content, series and instance creation date/time.
    ed_frame_numbers, es_frame_numbers
        Per slice, as ``result.ed_sop_instance_uids`` and ``result.es_sop_instance_uids``: the
        image's frame number in a multi-frame instance, None for a single-frame image (as
        :class:`node.reports.sources.ReportSources` gives them); empty when every image is
        single-frame. A multi-frame instance is referenced once per measurement, with the numbers of
        its frames used.

    Returns
    -------
    pydicom.dataset.Dataset
        A Comprehensive 3D SR (highdicom) in the study of the source (Study Instance UID copied
        exactly). CompletionFlag is PARTIAL because the review item the document exists for is
        still pending; the verified successor is COMPLETE.

    Raises
    ------
    ReportError
        No evidence, evidence of another study, an ED/ES image missing from the evidence, or frame
        numbers for another number of slices than the result's.
    """
    if not evidence_datasets:
        raise ReportError("a draft SR needs the source images as evidence")
    evidence = [sanitised_for_copy(dataset) for dataset in evidence_datasets]
    if any(str(dataset.StudyInstanceUID) != result.study_instance_uid for dataset in evidence):
        raise ReportError("evidence belongs to another study than the result")
    by_uid = {str(dataset.SOPInstanceUID): dataset for dataset in evidence}
    content = ReportContent(
        model=result.model,
        tracking_uid=derived_uid(
            "lv-volumes", result.study_instance_uid, *result.series_instance_uids, result.model.name
        ),
        values=ReportedValues(
            edv_ml=_rounded(result.edv_ml),
            esv_ml=_rounded(result.esv_ml),
            ef_pct=_rounded(result.ef_pct),
            sv_ml=_rounded(result.sv_ml),
            lv_mass_g=_rounded(result.lv_mass_g),
            confidence=_rounded(result.confidence, CONFIDENCE_DECIMALS),
        ),
        review=ReviewStatus.PENDING,
        qc_status=result.qc_status,
        qc_flags=tuple(result.qc_flags),
        statements=(
            PENDING_STATEMENT,
            qc_statement(result.qc_status),
            *(flag_text(flag) for flag in result.qc_flags),
        ),
        ed_images=_references(result.ed_sop_instance_uids, ed_frame_numbers, by_uid, "end-diastolic"),
        es_images=_references(result.es_sop_instance_uids, es_frame_numbers, by_uid, "end-systolic"),
        algorithm_parameters=stated_parameters(result),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[without_patient_name(evidence[0]), *evidence[1:]],
        content=_report(content, amended=False, person=None),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=DRAFT_SERIES_DESCRIPTION,
        software_versions=__version__,
        coding_schemes=[coding_scheme_identification()],
        content_date=now.date(),
        content_time=now.time(),
        series_date=now.date(),
        series_time=now.time(),
    )
    sr.copy_patient_and_study_information(evidence[0])
    _stamp(sr, now)
    check_sign_off_flags(sr)
    return sr


def _text_values(group: Dataset, name: Code, *, recursive: bool = False) -> list[str]:
    return [
        str(item.TextValue)
        for item in hd.sr.utils.find_content_items(
            group, name=name, value_type=hd.sr.ValueTypeValues.TEXT, recursive=recursive
        )
    ]


def _code_values(group: Dataset, name: Code) -> list[str]:
    """Code Value (or Long Code Value) of each CODE item named ``name`` directly in ``group``."""
    values: list[str] = []
    for item in hd.sr.utils.find_content_items(group, name=name, value_type=hd.sr.ValueTypeValues.CODE):
        concept = item.ConceptCodeSequence[0]
        values.append(str(concept.get("CodeValue") or concept.get("LongCodeValue")))
    return values


def read_report(dataset: Dataset) -> ReportContent:
    """Read back the content of an SR this module built (the draft or a verified successor).

    Raises
    ------
    ReportError
        The dataset is not a TID 1500 SR with the node's measurement group.
    """
    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
        report = sr.content
        if not isinstance(report, hd.sr.MeasurementReport):
            raise ReportError("not a TID 1500 Measurement Report")
        groups = report.get_image_measurement_groups()
        if len(groups) != 1:
            raise ReportError("expected exactly one measurement group")
        group = groups[0]
        item = group[0]
        # Group-level TID 4019 in a draft; inside the AI's own measurements in an amended SR.
        names = _text_values(item, codes.DCM.AlgorithmName, recursive=True)
        versions = _text_values(item, codes.DCM.AlgorithmVersion, recursive=True)
        # Each AI measurement of an amended SR repeats the parameters: each is kept once, in order.
        parameters = tuple(dict.fromkeys(_text_values(item, codes.DCM.AlgorithmParameters, recursive=True)))
        stated = dict(parameter.partition("=")[::2] for parameter in parameters)
        review = _code_values(item, REVIEW_STATUS)
        status = _code_values(item, QC_STATUS)
        flags = _code_values(item, QC_FLAG)
        values: dict[str, float] = {}
        images: dict[str, tuple[ImageReference, ...]] = {}
        for key, code in (
            ("edv_ml", LVEDV),
            ("esv_ml", LVESV),
            ("ef_pct", LVEF_MR),
            ("sv_ml", STROKE_VOLUME),
            ("lv_mass_g", LV_MASS),
            ("confidence", AI_CONFIDENCE),
        ):
            found = group.get_measurements(name=code)
            if found:
                values[key] = float(found[0].value)
                images[key] = tuple(
                    ImageReference(
                        str(ref.referenced_sop_class_uid),
                        str(ref.referenced_sop_instance_uid),
                        tuple(int(number) for number in ref.referenced_frame_numbers or ()),
                    )
                    for ref in found[0].referenced_images
                )
        if not names or not versions or len(review) != 1:
            raise ReportError("measurement group lacks the algorithm or the review status")
        return ReportContent(
            model=ModelIdentity(
                name=names[0],
                version=versions[0],
                sha256=stated.get("model_sha256"),
                companion_sha256=stated.get("companion_sha256"),
            ),
            tracking_uid=str(group.tracking_uid),
            values=ReportedValues(**values) if len(values) == len(fields(ReportedValues)) else None,
            review=review_status_of(review[0]),
            qc_status=qc_status_of(status[0]) if status else None,
            qc_flags=tuple(qc_flag_of(flag) for flag in flags if flag != QC_NONE.value),
            statements=tuple(_text_values(item, QUALITATIVE_EVALUATIONS)),
            ed_images=images.get("edv_ml", ()),
            es_images=images.get("esv_ml", ()),
            algorithm_parameters=parameters,
        )
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise ReportError(f"not an SR of the node: {type(error).__name__}") from None


def _evidence_of(draft: Dataset) -> list[Dataset]:
    """Stand-ins for the draft's evidence: the referenced instances' UIDs with the draft's patient/study.

    The reviewer only has the draft; its Current Requested Procedure Evidence Sequence (PS3.3
    C.17.2.3) names every image the content references, and highdicom needs one dataset per image.
    """
    stand_ins: list[Dataset] = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in draft.get(keyword) or []:
            for series in study.ReferencedSeriesSequence:
                for instance in series.ReferencedSOPSequence:
                    item = Dataset()
                    item.StudyInstanceUID = study.StudyInstanceUID
                    item.SeriesInstanceUID = series.SeriesInstanceUID
                    item.SOPClassUID = instance.ReferencedSOPClassUID
                    item.SOPInstanceUID = instance.ReferencedSOPInstanceUID
                    for attribute in (*TYPE2_COPIED, "SpecificCharacterSet"):
                        if attribute in draft:
                            item.add(copy.deepcopy(draft[attribute]))
                    item.PatientName = None  # copied from the draft afterwards, see without_patient_name
                    stand_ins.append(item)
    same_study = [item for item in stand_ins if item.StudyInstanceUID == draft.StudyInstanceUID]
    return same_study + [item for item in stand_ins if item.StudyInstanceUID != draft.StudyInstanceUID]


def _validated(observer: VerifyingObserver) -> VerifyingObserver:
    name, organization = observer.name.strip(), observer.organization.strip()
    if not name:
        raise ReportError("a verified SR needs the verifying observer's name")
    if not organization:
        raise ReportError("a verified SR needs the verifying observer's organization")
    if len(organization) > LO_MAX_CHARS:
        raise ReportError("verifying organization is longer than 64 characters")
    if PN_COMPONENT_SEPARATOR not in name:
        # A single-component PN is valid DICOM but almost always a mistake ("Jane Smith").
        raise ReportError("verifying observer name must be a DICOM person name, e.g. 'Smith^Jane'")
    return VerifyingObserver(
        name=name, organization=organization, identification_code=observer.identification_code
    )


def _amended_values(base: ReportedValues, amended: tuple[float, float]) -> ReportedValues:
    edv, esv = (float(value) for value in amended)
    if not (math.isfinite(edv) and math.isfinite(esv)) or edv <= 0 or esv < 0 or esv > edv:
        raise ReportError("amended volumes need 0 <= ESV <= EDV and EDV > 0")
    return ReportedValues(
        edv_ml=_rounded(edv),
        esv_ml=_rounded(esv),
        ef_pct=_rounded(ejection_fraction(edv, esv)),
        sv_ml=_rounded(stroke_volume(edv, esv)),
        lv_mass_g=base.lv_mass_g,
        confidence=base.confidence,
    )


def build_verified_sr(
    draft: Dataset,
    *,
    observer: VerifyingObserver,
    review: ReviewStatus,
    verified_at: datetime,
    amended: tuple[float, float] | None = None,
    reason: str | None = None,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int,
    series_number: int = VERIFIED_SR_SERIES_NUMBER,
) -> Dataset:
    """A new SR instance recording the radiologist's sign-off, amendment or rejection of a draft.

    The content is rebuilt through highdicom from what :func:`read_report` reads in the draft:
    SIGNED_OFF keeps every value; AMENDED replaces EDV/ESV by ``amended`` (EF and SV derived from
    them, LV mass and confidence kept) and states the AI values and the reason; REJECTED withdraws the
    measurements and states the rejection and its reason. The document is VERIFIED, FINAL and
    COMPLETE, names the observer in the Verifying Observer Sequence (0040,A073) and in the
    observation context (TID 1003), and references the draft in the Predecessor Documents Sequence
    (0040,A360).

    Parameters
    ----------
    draft
        The UNVERIFIED draft SR, as built by :func:`build_draft_sr` (or read back from its file).
    observer
        Who verifies; name and organization are required.
    review
        SIGNED_OFF, AMENDED or REJECTED.
    verified_at
        Verification Date Time (0040,A030) and content date/time; timezone-aware is recommended
        (the offset is written into the DT value).
    amended
        (EDV mL, ESV mL) for AMENDED; must be None otherwise.
    reason
        Required for AMENDED and REJECTED; an optional comment for SIGNED_OFF.

    Raises
    ------
    ReportError
        No observer name or organization, PENDING as review, AMENDED without values or reason,
        REJECTED without reason, values given for another status, or a draft that is not an
        UNVERIFIED SR of this module.
    """
    observer = _validated(observer)
    if review == ReviewStatus.PENDING:
        raise ReportError("a verified SR cannot leave the review pending")
    text = (reason or "").strip()
    if review in (ReviewStatus.AMENDED, ReviewStatus.REJECTED) and not text:
        raise ReportError(f"a {review.value} result needs a reason")
    if review == ReviewStatus.AMENDED and amended is None:
        raise ReportError("an amended result needs the amended EDV and ESV")
    if review != ReviewStatus.AMENDED and amended is not None:
        raise ReportError("amended values are only accepted with the AMENDED review status")
    if str(draft.get("VerificationFlag", "")) != VerificationFlag.UNVERIFIED:
        raise ReportError("the predecessor must be the UNVERIFIED draft")
    found = read_report(draft)
    if found.values is None:
        raise ReportError("the draft has no measurements")

    values: ReportedValues | None = found.values
    statements: list[str] = []
    if review == ReviewStatus.AMENDED and amended is not None:
        values = _amended_values(found.values, amended)
        statements.append(AMENDED_STATEMENT.format(edv=found.values.edv_ml, esv=found.values.esv_ml))
    elif review == ReviewStatus.REJECTED:
        values = None
        statements.append(REJECTED_STATEMENT)
    if text:
        statements.append(REASON_PREFIX[review] + text)
    if found.qc_status is not None:
        statements.append(qc_statement(found.qc_status))
    statements.extend(flag_text(flag) for flag in found.qc_flags)
    content = ReportContent(
        model=found.model,
        tracking_uid=found.tracking_uid,
        values=values,
        review=review,
        qc_status=found.qc_status,
        qc_flags=found.qc_flags,
        statements=tuple(statements),
        ed_images=found.ed_images,
        es_images=found.es_images,
        algorithm_parameters=found.algorithm_parameters,
    )
    evidence = _evidence_of(draft)
    if not evidence:
        raise ReportError("the draft lists no evidence")
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=_report(content, amended=review == ReviewStatus.AMENDED, person=observer),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=observer.name,
        verifying_organization=observer.organization,
        previous_versions=[draft],
        series_description=VERIFIED_SERIES_DESCRIPTIONS[review],
        software_versions=__version__,
        coding_schemes=[coding_scheme_identification()],
        content_date=verified_at.date(),
        content_time=verified_at.time(),
        series_date=verified_at.date(),
        series_time=verified_at.time(),
    )
    sr.copy_patient_and_study_information(draft)
    item = sr.VerifyingObserverSequence[0]
    item.VerificationDateTime = DT(verified_at)
    if observer.identification_code is not None:
        item.VerifyingObserverIdentificationCodeSequence = [
            hd.sr.CodedConcept.from_code(observer.identification_code)
        ]
    _stamp(sr, verified_at)
    check_sign_off_flags(sr)
    return sr
