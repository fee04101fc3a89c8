"""Source loading and header sanitising for reports (node.reports.sources)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom.config
import pytest
from pydicom.dataset import Dataset

from node.reports.errors import ReportError
from node.reports.sources import (
    load_report_sources,
    mid_ventricular_slice,
    sanitised_for_copy,
    valid_da,
    valid_dt,
    valid_tm,
)
from tests.reports.conftest import Case, Synthetic, synthetic_mr


def _uids(dataset: Dataset) -> list[tuple[str, str]]:
    return [(str(element.tag), str(element.value)) for element in dataset.iterall() if element.VR == "UI"]


@pytest.mark.parametrize(
    ("value", "valid"),
    [("20120101", True), ("20120000", False), ("00000000", False), ("20120230", False), ("2012", False)],
)
def test_da_validity_follows_ps3_5(value: str, valid: bool) -> None:
    """DA values are valid only as YYYYMMDD naming a real calendar date."""
    assert valid_da(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("083237.000000", True),
        ("0832", True),
        ("08", True),
        ("25", False),
        ("08:32:37", False),
        ("0860", False),
    ],
)
def test_tm_validity_follows_ps3_5(value: str, valid: bool) -> None:
    """TM values are valid only as HH[MM[SS[.F]]] within range, without colons."""
    assert valid_tm(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("20260301120000+0000", True), ("2026", True), ("20260001", False), ("20260301250000", False)],
)
def test_dt_validity_follows_ps3_5(value: str, valid: bool) -> None:
    """DT values are valid only with a real date, times in range and an optional UTC offset."""
    assert valid_dt(value) is valid


def test_sanitising_blanks_invalid_dates_and_keeps_every_uid() -> None:
    """Invalid DA/TM values are blanked (nested ones too); valid ones and every UID stay as they are."""
    source = synthetic_mr(0, 0)
    with pydicom.config.disable_value_validation():
        source.StudyTime = "25:00"
        source.SeriesDate = "20120101"
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.04"
        item.InstanceCreationDate = "20129999"
        source.ReferencedStudySequence = [item]
    clean = sanitised_for_copy(source)
    assert clean.PatientBirthDate == ""
    assert clean.StudyDate == ""
    assert clean.StudyTime == ""
    assert clean.SeriesDate == "20120101"
    assert clean.ReferencedStudySequence[0].InstanceCreationDate == ""
    assert _uids(clean) == _uids(source)
    assert clean.StudyInstanceUID == "1.2.826.0.1.3680043.10.999.01"
    assert source.PatientBirthDate == "00000000", "the input must not be modified"


def test_sanitising_adds_absent_type2_attributes_and_blanks_unknown_sex() -> None:
    """Absent Type 2 patient/study attributes highdicom reads are added empty; an unknown sex is blanked."""
    source = synthetic_mr(0, 0)
    del source.PatientSex
    del source.AccessionNumber
    clean = sanitised_for_copy(source)
    assert "PatientSex" in clean and not clean.PatientSex
    assert "AccessionNumber" in clean and not clean.AccessionNumber
    source.PatientSex = "X"
    assert not sanitised_for_copy(source).PatientSex


def test_mid_ventricular_slice_is_the_middle_slice_with_blood_pool(synthetic: Synthetic) -> None:
    """The mid-ventricular slice is the middle of the slices with LV at ED and images at ED and ES."""
    result = synthetic.result
    assert mid_ventricular_slice(result) == 1
    areas = tuple(
        (0.0, 0.0, 0.0, 0.0) if index == 0 else row for index, row in enumerate(result.blood_pool_mm2)
    )
    assert mid_ventricular_slice(dataclasses.replace(result, blood_pool_mm2=areas)) == 2


def test_mid_ventricular_slice_needs_an_image_at_ed_and_es(synthetic: Synthetic) -> None:
    """Without any slice imaged at both ED and ES there is no frame to show, and the loader refuses."""
    result = dataclasses.replace(synthetic.result, es_sop_instance_uids=(None, None, None))
    with pytest.raises(ReportError):
        mid_ventricular_slice(result)


def test_report_sources_of_a_real_stack_are_headers_and_two_frames(case: Case) -> None:
    """ED/ES evidence is read without pixel data, in slice order; the mid-ventricular frames with it."""
    sources, result = case.sources, case.result
    assert [str(d.SOPInstanceUID) for d in sources.ed_headers] == [
        uid for uid in result.ed_sop_instance_uids if uid is not None
    ]
    assert [str(d.SOPInstanceUID) for d in sources.es_headers] == [
        uid for uid in result.es_sop_instance_uids if uid is not None
    ]
    assert all("PixelData" not in dataset for dataset in sources.evidence)
    assert sources.ed_image.SOPInstanceUID == result.ed_sop_instance_uids[sources.mid_slice]
    assert sources.es_image.SOPInstanceUID == result.es_sop_instance_uids[sources.mid_slice]
    assert sources.ed_image.pixel_array.shape == (case.plan.rows, case.plan.columns)


def test_report_sources_refuse_a_grid_of_another_result(case: Case) -> None:
    """A grid whose images differ from the result's ED UIDs is refused rather than silently mixed up."""
    shifted = dataclasses.replace(case.result, ed_phase=(case.result.ed_phase + 1) % case.result.phases)
    with pytest.raises(ReportError):
        load_report_sources(case.plan.grid, shifted, Path("/"))
