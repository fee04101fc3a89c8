"""Draft and verified Structured Reports (node.reports.sr), written, read back and validated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from node.inference.qc import flag_text
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
    PERCENT,
    QC_FLAG,
    QUALITATIVE_EVALUATIONS,
    REVIEW_STATUS,
    REVIEW_STATUS_CODES,
    SCHEME,
    STROKE_VOLUME,
    ReviewStatus,
    qc_flag_code,
)
from node.reports.errors import ReportError
from node.reports.sr import (
    DRAFT_SERIES_DESCRIPTION,
    VERIFIED_SERIES_DESCRIPTIONS,
    VerifyingObserver,
    build_draft_sr,
    build_verified_sr,
    check_sign_off_flags,
    read_report,
)
from tests.reports.conftest import Case, Synthetic, read_back
from tests.validation import dciodvfy, uids_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
VERIFIED_AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
OBSERVER = VerifyingObserver(
    name="Smith^Jane",
    organization="General Hospital Radiology",
    identification_code=Code("R-0042", "99HOSP", "Staff 42"),
)
AMENDED = (185.0, 140.0)
SIGNED_OFF_SOP = "1.2.826.0.1.3680043.10.999.90.2"


def _uid(tag: int) -> str:
    return f"1.2.826.0.1.3680043.10.999.90.{tag}"


def _draft(result_source: Case | Synthetic, evidence: list[Dataset]) -> Dataset:
    return build_draft_sr(
        result_source.result,
        evidence,
        series_instance_uid=_uid(10),
        sop_instance_uid=_uid(1),
        instance_number=1,
        now=NOW,
    )


def _verify(draft: Dataset, review: ReviewStatus, **overrides: object) -> Dataset:
    arguments: dict[str, object] = {
        "observer": OBSERVER,
        "review": review,
        "verified_at": VERIFIED_AT,
        "amended": AMENDED if review == ReviewStatus.AMENDED else None,
        "reason": None if review == ReviewStatus.SIGNED_OFF else "Basal slice includes left atrium.",
        "sop_instance_uid": _uid(2),
        "series_instance_uid": _uid(20),
        "instance_number": 1,
    }
    arguments.update(overrides)
    return build_verified_sr(draft, **arguments)  # type: ignore[arg-type]


def _items(dataset: Dataset, name: Code) -> list[Dataset]:
    return list(hd.sr.utils.find_content_items(dataset, name=name, recursive=True))


def _code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptCodeSequence[0]
    return str(concept.get("CodeValue") or concept.get("LongCodeValue")), str(concept.CodingSchemeDesignator)


def _name(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodeValue), str(concept.CodingSchemeDesignator)


def _num(dataset: Dataset, name: Code) -> tuple[float, str]:
    (item,) = _items(dataset, name)
    value = item.MeasuredValueSequence[0]
    return float(value.NumericValue), str(value.MeasurementUnitsCodeSequence[0].CodeValue)


def _image_refs(dataset: Dataset, name: Code) -> list[str]:
    (item,) = _items(dataset, name)
    return [
        str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for child in item.get("ContentSequence", [])
        if child.ValueType == "IMAGE"
    ]


def _texts(dataset: Dataset) -> list[str]:
    return [str(item.TextValue) for item in _items(dataset, QUALITATIVE_EVALUATIONS)]


def _review(dataset: Dataset) -> tuple[str, str]:
    (item,) = _items(dataset, REVIEW_STATUS)
    return _code(item)


@pytest.fixture(scope="module")
def written(case: Case, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The draft and its three possible verified successors, written as Part 10 files."""
    folder = tmp_path_factory.mktemp("sr")
    draft = _draft(case, list(case.sources.evidence))
    paths = {"draft": folder / "draft.dcm"}
    draft.save_as(paths["draft"], enforce_file_format=True)
    on_disk = read_back(paths["draft"])
    for review in (ReviewStatus.SIGNED_OFF, ReviewStatus.AMENDED, ReviewStatus.REJECTED):
        paths[review.value] = folder / f"{review.value}.dcm"
        _verify(on_disk, review).save_as(paths[review.value], enforce_file_format=True)
    yield paths


@pytest.mark.parametrize("name", ["draft", "signed_off", "amended", "rejected"])
def test_every_sr_passes_dciodvfy_except_for_the_sources_own_uids(
    name: str, written: dict[str, Path], case: Case, tmp_path: Path
) -> None:
    """dciodvfy reports no error in any SR other than the leading zeros of UIDs copied from the source."""
    validation = dciodvfy(read_back(written[name]), tmp_path / "checked.dcm", case.source_uids)
    assert validation.errors == (), validation.output
    assert "Comprehensive3DSR" in validation.output


def test_draft_is_unverified_preliminary_partial_and_labelled(written: dict[str, Path]) -> None:
    """The draft is UNVERIFIED, PRELIMINARY and PARTIAL, names no verifier and says so in its description."""
    draft = read_back(written["draft"])
    assert draft.SOPClassUID == Comprehensive3DSRStorage
    assert (draft.VerificationFlag, draft.PreliminaryFlag, draft.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "PARTIAL",
    )
    assert "VerifyingObserverSequence" not in draft
    assert draft.SeriesDescription == DRAFT_SERIES_DESCRIPTION == "AI LV volumes - UNVERIFIED"
    assert _review(draft) == (REVIEW_STATUS_CODES[ReviewStatus.PENDING].value, SCHEME)
    assert any("pending radiologist review" in text for text in _texts(draft))


def test_draft_is_filed_in_the_source_study_with_sanitised_patient(
    written: dict[str, Path], case: Case
) -> None:
    """The source's Study Instance UID is kept exactly (leading zeros too); patient copied, dates fixed."""
    draft = read_back(written["draft"])
    source = case.sources.ed_image
    assert draft.StudyInstanceUID == source.StudyInstanceUID == case.result.study_instance_uid
    assert ".0" in draft.StudyInstanceUID
    assert (draft.PatientName, draft.PatientID) == (source.PatientName, source.PatientID)
    assert source.PatientBirthDate == "00000000" and draft.PatientBirthDate == ""
    assert source.StudyDate == "20120000" and draft.StudyDate == ""
    assert draft.StudyTime == source.StudyTime
    assert (draft.ContentDate, draft.ContentTime) == ("20260301", "120000")


def test_draft_reports_every_measurement_with_its_code_and_unit(written: dict[str, Path], case: Case) -> None:
    """EDV, ESV, SV (ml), EF (%), LV mass (g) and the confidence hold the result's values, rounded."""
    draft, result = read_back(written["draft"]), case.result
    assert _num(draft, LVEDV) == (round(result.edv_ml, 1), MILLILITER.value)
    assert _num(draft, LVESV) == (round(result.esv_ml, 1), MILLILITER.value)
    assert _num(draft, LVEF_MR) == (round(result.ef_pct, 1), PERCENT.value)
    assert _num(draft, STROKE_VOLUME) == (round(result.sv_ml, 1), MILLILITER.value)
    assert _num(draft, LV_MASS) == (round(result.lv_mass_g, 1), GRAM.value)
    assert _num(draft, AI_CONFIDENCE)[0] == round(result.confidence, 3)
    (edv,) = _items(draft, LVEDV)
    assert _name(edv) == ("8821-1", "LN")
    assert edv.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"


def test_draft_references_the_ed_and_es_images(written: dict[str, Path], case: Case) -> None:
    """EDV cites every ED image, ESV every ES image, EF and SV both; all are listed as evidence."""
    draft, result = read_back(written["draft"]), case.result
    ed = [uid for uid in result.ed_sop_instance_uids if uid is not None]
    es = [uid for uid in result.es_sop_instance_uids if uid is not None]
    assert _image_refs(draft, LVEDV) == ed
    assert _image_refs(draft, LVESV) == es
    assert _image_refs(draft, LVEF_MR) == ed + es
    assert _image_refs(draft, STROKE_VOLUME) == ed + es
    (study,) = draft.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == result.study_instance_uid
    listed = {
        str(item.ReferencedSOPInstanceUID)
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert listed == set(ed + es)
    assert {str(s.SeriesInstanceUID) for s in study.ReferencedSeriesSequence} == set(
        result.series_instance_uids
    )


def test_draft_states_site_procedure_algorithm_and_qc(written: dict[str, Path], case: Case) -> None:
    """Finding site LV, procedure cardiac MRI, model name and version, each QC flag coded and explained."""
    draft, result = read_back(written["draft"]), case.result
    assert draft.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert {_code(item) for item in _items(draft, codes.SCT.FindingSite)} == {
        (LEFT_VENTRICLE.value, LEFT_VENTRICLE.scheme_designator)
    }
    assert {_code(item) for item in _items(draft, codes.DCM.ProcedureReported)} == {
        (CARDIAC_MRI.value, CARDIAC_MRI.scheme_designator)
    }
    assert [item.TextValue for item in _items(draft, codes.DCM.AlgorithmName)] == [result.model.name]
    assert [item.TextValue for item in _items(draft, codes.DCM.AlgorithmVersion)] == [result.model.version]
    assert result.qc_flags, "the Sunnybrook stack raises a QC flag"
    assert [_code(item)[0] for item in _items(draft, QC_FLAG)] == [
        qc_flag_code(f).value for f in result.qc_flags
    ]
    assert all(flag_text(flag) in _texts(draft) for flag in result.qc_flags)
    assert SCHEME in {item.CodingSchemeDesignator for item in draft.CodingSchemeIdentificationSequence}


def test_signed_off_sr_is_a_verified_successor_of_the_draft(written: dict[str, Path]) -> None:
    """Sign-off is a new VERIFIED/FINAL/COMPLETE SR naming the observer, after the draft, same values."""
    draft, signed = read_back(written["draft"]), read_back(written["signed_off"])
    assert signed.SOPInstanceUID != draft.SOPInstanceUID
    assert (signed.VerificationFlag, signed.PreliminaryFlag, signed.CompletionFlag) == (
        "VERIFIED",
        "FINAL",
        "COMPLETE",
    )
    assert signed.SeriesDescription == VERIFIED_SERIES_DESCRIPTIONS[ReviewStatus.SIGNED_OFF]
    (observer,) = signed.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "Smith^Jane"
    assert observer.VerifyingOrganization == "General Hospital Radiology"
    assert observer.VerificationDateTime == "20260302093000+0000"
    (code,) = observer.VerifyingObserverIdentificationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("R-0042", "99HOSP")
    (study,) = signed.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (
        draft.StudyInstanceUID,
        draft.SeriesInstanceUID,
    )
    assert (instance.ReferencedSOPInstanceUID, instance.ReferencedSOPClassUID) == (
        draft.SOPInstanceUID,
        draft.SOPClassUID,
    )
    assert signed.StudyInstanceUID == draft.StudyInstanceUID
    assert (signed.PatientName, signed.PatientID) == (draft.PatientName, draft.PatientID)
    for name in (LVEDV, LVESV, LVEF_MR, STROKE_VOLUME, LV_MASS, AI_CONFIDENCE):
        assert _num(signed, name) == _num(draft, name)
        assert _image_refs(signed, name) == _image_refs(draft, name)
    assert _review(signed) == (REVIEW_STATUS_CODES[ReviewStatus.SIGNED_OFF].value, SCHEME)
    assert [item.PersonName for item in _items(signed, codes.DCM.PersonObserverName)] == ["Smith^Jane"]


def test_amended_sr_reports_the_radiologists_volumes_and_why(written: dict[str, Path]) -> None:
    """An amendment reports the amended EDV/ESV, EF and SV derived from them, the AI values and the reason."""
    draft, amended = read_back(written["draft"]), read_back(written["amended"])
    edv, esv = AMENDED
    assert _num(amended, LVEDV) == (edv, "ml")
    assert _num(amended, LVESV) == (esv, "ml")
    assert _num(amended, STROKE_VOLUME) == (edv - esv, "ml")
    assert _num(amended, LVEF_MR) == (round(100 * (edv - esv) / edv, 1), "%")
    assert _num(amended, LV_MASS) == _num(draft, LV_MASS)
    assert _review(amended) == (REVIEW_STATUS_CODES[ReviewStatus.AMENDED].value, SCHEME)
    texts = _texts(amended)
    assert any(text.startswith("EDV and ESV amended by the radiologist") for text in texts)
    assert f"AI values: EDV {_num(draft, LVEDV)[0]:.1f} mL" in " ".join(texts)
    assert "Reason for amendment: Basal slice includes left atrium." in texts
    assert amended.SeriesDescription == VERIFIED_SERIES_DESCRIPTIONS[ReviewStatus.AMENDED]
    assert (amended.VerificationFlag, amended.CompletionFlag) == ("VERIFIED", "COMPLETE")


def test_rejected_sr_withdraws_the_measurements_and_gives_the_reason(written: dict[str, Path]) -> None:
    """A rejection states that the AI result was rejected and why, and reports no AI number as a finding."""
    rejected = read_back(written["rejected"])
    assert _review(rejected) == (REVIEW_STATUS_CODES[ReviewStatus.REJECTED].value, SCHEME)
    assert not hd.sr.utils.find_content_items(rejected, value_type=hd.sr.ValueTypeValues.NUM, recursive=True)
    texts = _texts(rejected)
    assert any(text.startswith("AI result rejected by the radiologist") for text in texts)
    assert "Reason for rejection: Basal slice includes left atrium." in texts
    assert (rejected.VerificationFlag, rejected.PreliminaryFlag, rejected.CompletionFlag) == (
        "VERIFIED",
        "FINAL",
        "COMPLETE",
    )
    assert rejected.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]


def test_synthetic_draft_builds_without_shared_data(synthetic: Synthetic, tmp_path: Path) -> None:
    """Invalid dates and leading-zero UIDs still give a valid draft; only those UIDs trouble dciodvfy."""
    draft = _draft(synthetic, synthetic.evidence)
    assert draft.StudyInstanceUID == "1.2.826.0.1.3680043.10.999.01"
    assert (draft.PatientBirthDate, draft.StudyDate) == ("", "")
    validation = dciodvfy(draft, tmp_path / "draft.dcm", uids_of(synthetic.evidence))
    assert validation.errors == (), validation.output
    assert validation.source_uid_errors


@pytest.fixture
def synthetic_draft(synthetic: Synthetic) -> Dataset:
    """A draft SR of the synthetic stack."""
    return _draft(synthetic, synthetic.evidence)


def _parameters(dataset: Dataset) -> list[str]:
    return [str(item.TextValue) for item in _items(dataset, codes.DCM.AlgorithmParameters)]


def test_the_basal_rule_and_the_model_files_sha256_travel_as_algorithm_parameters(
    synthetic: Synthetic, synthetic_draft: Dataset
) -> None:
    """TID 4019 Algorithm Parameters of the draft say how the volumes were measured and with which
    exact model files; a signed-off or rejected successor states them again, and an amended one with
    the AI's own values only (the radiologist's values carry no algorithm)."""
    model = synthetic.result.model
    assert model.sha256 is not None and model.companion_sha256 is not None
    expected = [
        "basal_rule=per_phase",
        f"model_sha256={model.sha256}",
        f"companion_sha256={model.companion_sha256}",
    ]
    assert _parameters(synthetic_draft) == expected
    assert read_report(synthetic_draft).algorithm_parameters == tuple(expected)
    assert read_report(synthetic_draft).model == model
    for review in (ReviewStatus.SIGNED_OFF, ReviewStatus.REJECTED):
        assert _parameters(_verify(synthetic_draft, review)) == expected
    amended = _verify(synthetic_draft, ReviewStatus.AMENDED)
    assert set(_parameters(amended)) == set(expected)
    assert read_report(amended).algorithm_parameters == tuple(expected)


def test_a_result_measured_before_the_node_recorded_them_states_no_algorithm_parameters(
    synthetic: Synthetic,
) -> None:
    unrecorded = replace(
        synthetic.result,
        basal_rule=None,
        model=replace(synthetic.result.model, sha256=None, companion_sha256=None),
    )
    draft = _draft(replace(synthetic, result=unrecorded), synthetic.evidence)
    assert _parameters(draft) == []
    assert read_report(draft).algorithm_parameters == ()


@pytest.mark.parametrize(
    ("observer", "message"),
    [
        (VerifyingObserver(name="", organization="General Hospital"), "name"),
        (VerifyingObserver(name="   ", organization="General Hospital"), "name"),
        (VerifyingObserver(name="Smith^Jane", organization=""), "organization"),
        (VerifyingObserver(name="Smith^Jane", organization="  "), "organization"),
        (VerifyingObserver(name="Jane Smith", organization="General Hospital"), "person name"),
    ],
)
def test_verification_refuses_an_unnamed_observer_or_organization(
    synthetic_draft: Dataset, observer: VerifyingObserver, message: str
) -> None:
    """A VERIFIED SR is refused without a named observer (as a DICOM person name) and an organization."""
    with pytest.raises(ReportError, match=message):
        _verify(synthetic_draft, ReviewStatus.SIGNED_OFF, observer=observer)


@pytest.mark.parametrize("reason", [None, "", "   "])
@pytest.mark.parametrize("review", [ReviewStatus.REJECTED, ReviewStatus.AMENDED])
def test_rejection_and_amendment_refuse_a_missing_reason(
    synthetic_draft: Dataset, review: ReviewStatus, reason: str | None
) -> None:
    """Rejecting or amending without a reason is refused."""
    with pytest.raises(ReportError, match="reason"):
        _verify(synthetic_draft, review, reason=reason)


def test_amendment_refuses_missing_or_impossible_values(synthetic_draft: Dataset) -> None:
    """An amendment needs amended EDV/ESV with 0 <= ESV <= EDV; values with another status are refused too."""
    with pytest.raises(ReportError, match="amended EDV and ESV"):
        _verify(synthetic_draft, ReviewStatus.AMENDED, amended=None)
    for values in ((100.0, 120.0), (0.0, 0.0), (float("nan"), 50.0), (100.0, -1.0)):
        with pytest.raises(ReportError, match="ESV"):
            _verify(synthetic_draft, ReviewStatus.AMENDED, amended=values)
    with pytest.raises(ReportError, match="AMENDED"):
        _verify(synthetic_draft, ReviewStatus.SIGNED_OFF, amended=(150.0, 60.0))


def test_verification_refuses_a_pending_review(synthetic_draft: Dataset) -> None:
    """A verified SR cannot carry the status "pending radiologist review"."""
    with pytest.raises(ReportError, match="pending"):
        _verify(synthetic_draft, ReviewStatus.PENDING)


def test_verification_refuses_a_predecessor_that_is_not_an_unverified_draft(synthetic_draft: Dataset) -> None:
    """Only the UNVERIFIED draft can be verified: a verified SR or a non-SR dataset is refused."""
    signed = _verify(synthetic_draft, ReviewStatus.SIGNED_OFF)
    with pytest.raises(ReportError, match="UNVERIFIED"):
        _verify(signed, ReviewStatus.SIGNED_OFF)
    image = Dataset()
    image.VerificationFlag = "UNVERIFIED"
    with pytest.raises(ReportError):
        _verify(image, ReviewStatus.SIGNED_OFF)


def test_sign_off_check_refuses_verified_without_complete(synthetic_draft: Dataset) -> None:
    """VERIFIED implies COMPLETE and FINAL and an observer; UNVERIFIED implies no observer."""
    signed = _verify(synthetic_draft, ReviewStatus.SIGNED_OFF)
    check_sign_off_flags(signed)
    signed.CompletionFlag = "PARTIAL"
    with pytest.raises(ReportError, match="COMPLETE"):
        check_sign_off_flags(signed)
    signed.CompletionFlag = "COMPLETE"
    signed.PreliminaryFlag = "PRELIMINARY"
    with pytest.raises(ReportError, match="FINAL"):
        check_sign_off_flags(signed)
    signed.PreliminaryFlag = "FINAL"
    signed.VerifyingObserverSequence[0].VerifyingOrganization = ""
    with pytest.raises(ReportError, match="Verifying Observer"):
        check_sign_off_flags(signed)
    synthetic_draft.VerifyingObserverSequence = [Dataset()]
    with pytest.raises(ReportError, match="UNVERIFIED"):
        check_sign_off_flags(synthetic_draft)


def test_draft_refuses_evidence_without_the_ed_images(synthetic: Synthetic) -> None:
    """A draft whose evidence lacks an image the result was measured on is refused."""
    with pytest.raises(ReportError, match="end-diastolic"):
        _draft(synthetic, synthetic.evidence[1:])
    with pytest.raises(ReportError, match="evidence"):
        _draft(synthetic, [])
