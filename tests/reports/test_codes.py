"""The coded concepts of the reports (node.reports.codes)."""

from __future__ import annotations

import pytest

from node.inference.qc import QcFlag
from node.reports.codes import (
    CARDIAC_MRI,
    LEFT_VENTRICLE,
    LV_MASS,
    LVEDV,
    LVEF_MR,
    LVESV,
    MILLILITER,
    PERCENT,
    QC_FLAG_CODES,
    REVIEW_STATUS_CODES,
    SCHEME,
    STROKE_VOLUME,
    ReviewStatus,
    coding_scheme_identification,
    qc_flag_code,
    qc_flag_of,
    review_status_of,
)

#: CodeValue is SH (16 characters), CodeMeaning LO (64 characters), PS3.5 6.2.
SH_MAX, LO_MAX = 16, 64


def test_measurement_codes_are_the_agreed_ones() -> None:
    """LVEDV, LVESV, LVEF by MR, SV, LV mass, finding site and procedure carry the agreed code values."""
    assert (LVEDV.value, LVEDV.scheme_designator) == ("8821-1", "LN")
    assert (LVESV.value, LVESV.scheme_designator) == ("8823-7", "LN")
    assert (LVEF_MR.value, LVEF_MR.scheme_designator) == ("8811-2", "LN")
    assert (STROKE_VOLUME.value, STROKE_VOLUME.scheme_designator) == ("90096001", "SCT")
    assert (LV_MASS.value, LV_MASS.scheme_designator) == ("18087-7", "LN")
    assert (LEFT_VENTRICLE.value, LEFT_VENTRICLE.scheme_designator) == ("87878005", "SCT")
    assert (CARDIAC_MRI.value, CARDIAC_MRI.scheme_designator) == ("241620005", "SCT")
    assert (MILLILITER.value, PERCENT.value) == ("ml", "%")


def test_private_codes_fit_their_value_representations() -> None:
    """Every private code has a value of at most 16 and a meaning of at most 64 characters, all distinct."""
    private = [*QC_FLAG_CODES.values(), *REVIEW_STATUS_CODES.values()]
    assert all(code.scheme_designator == SCHEME for code in private)
    assert all(len(code.value) <= SH_MAX and len(code.meaning) <= LO_MAX for code in private)
    assert len({code.value for code in private}) == len(private)
    assert SCHEME.startswith("99")


def test_every_qc_flag_has_a_curated_code_that_maps_back() -> None:
    """Each flag QC can raise has its own code, and the code value maps back to the flag name."""
    assert set(QcFlag) == set(QC_FLAG_CODES)
    for flag in QcFlag:
        assert qc_flag_of(qc_flag_code(flag).value) == flag


def test_an_unknown_qc_flag_still_gets_a_code() -> None:
    """A flag added to QC later is coded by its own name rather than dropped."""
    code = qc_flag_code("some_new_flag_with_a_long_name")
    assert code.value == "some_new_flag_with_a_long_name"
    assert qc_flag_of(code.value) == "some_new_flag_with_a_long_name"


@pytest.mark.parametrize("status", list(ReviewStatus))
def test_review_status_codes_round_trip(status: ReviewStatus) -> None:
    """Each review status has a code whose value reads back as the same status."""
    assert review_status_of(REVIEW_STATUS_CODES[status].value) is status


def test_review_status_code_meanings_are_the_agreed_words() -> None:
    """The review statuses read "Pending radiologist review", "Signed off", "Amended" and "Rejected"."""
    meanings = {status: code.meaning for status, code in REVIEW_STATUS_CODES.items()}
    assert meanings == {
        ReviewStatus.PENDING: "Pending radiologist review",
        ReviewStatus.SIGNED_OFF: "Signed off",
        ReviewStatus.AMENDED: "Amended",
        ReviewStatus.REJECTED: "Rejected",
    }


def test_coding_scheme_item_declares_the_private_scheme() -> None:
    """The Coding Scheme Identification item names the private designator."""
    item = coding_scheme_identification()
    assert item.CodingSchemeDesignator == SCHEME
    assert item.CodingSchemeName
