"""The summary page (node.reports.render) and its secondary capture (node.reports.sc)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from node.domain import BasalRule
from node.inference.qc import QcFlag
from node.reports.codes import ReviewStatus
from node.reports.errors import ReportError
from node.reports.labels import LabelClasses
from node.reports.render import (
    BACKGROUND,
    BANNER_COLOURS,
    BANNER_HEIGHT,
    BLOOD_POOL_COLOUR,
    COLUMN_LEFT,
    HEIGHT,
    MARGIN,
    MYOCARDIUM_COLOUR,
    PANEL_SIZE,
    PANEL_TOP,
    WIDTH,
    Banner,
    BannerKind,
    Frame,
    _flag_lines,
    render_summary,
)
from node.reports.sc import SERIES_DESCRIPTIONS, build_sc, patient_orientation
from node.reports.sources import frame_pixels
from tests.reports.conftest import (
    BLOOD_POOL,
    MYOCARDIUM,
    SYNTHETIC_ED,
    SYNTHETIC_ES,
    Case,
    Synthetic,
    read_back,
)
from tests.validation import dciodvfy, uids_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLASSES = LabelClasses(blood_pool=BLOOD_POOL, myocardium=MYOCARDIUM)


def _render(case: Case, banner: Banner) -> npt.NDArray[np.uint8]:
    sources, result = case.sources, case.result
    return render_summary(
        result,
        ed=Frame(frame_pixels(sources.ed_image), case.labels[sources.mid_slice, result.ed_phase]),
        es=Frame(frame_pixels(sources.es_image), case.labels[sources.mid_slice, result.es_phase]),
        mid_slice=sources.mid_slice,
        classes=CLASSES,
        banner=banner,
    )


def _synthetic_render(synthetic: Synthetic, banner: Banner) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(0)
    pixels = rng.normal(100.0, 20.0, synthetic.labels.shape[2:])
    return render_summary(
        synthetic.result,
        ed=Frame(pixels, synthetic.labels[1, SYNTHETIC_ED]),
        es=Frame(pixels, synthetic.labels[1, SYNTHETIC_ES]),
        mid_slice=1,
        classes=CLASSES,
        banner=banner,
    )


def _banner_colour(rgb: npt.NDArray[np.uint8]) -> tuple[int, ...]:
    return tuple(int(v) for v in rgb[4, 4])


def test_page_is_rgb_at_pacs_viewer_size_with_an_unverified_banner(synthetic: Synthetic) -> None:
    """The page is a 1024 x 768 RGB image whose top band has the UNVERIFIED banner colour."""
    rgb = _synthetic_render(synthetic, Banner.unverified())
    assert rgb.shape == (HEIGHT, WIDTH, 3) == (768, 1024, 3)
    assert rgb.dtype == np.uint8
    assert _banner_colour(rgb) == BANNER_COLOURS[BannerKind.UNVERIFIED]
    band = rgb[:BANNER_HEIGHT]
    assert (band == 255).all(axis=-1).sum() > 1000, "the banner text is drawn in white"


def test_banner_text_states_the_sign_off() -> None:
    """The draft's banner warns it is not verified; a signed-off one names the radiologist and the date."""
    assert Banner.unverified().text == "AI RESULT - NOT VERIFIED BY A RADIOLOGIST"
    verified = Banner.verified("Smith^Jane", datetime(2026, 3, 2, 9, 30, tzinfo=UTC), ReviewStatus.SIGNED_OFF)
    assert verified.text == "VERIFIED BY JANE SMITH 2026-03-02"
    assert verified.kind is BannerKind.VERIFIED
    assert Banner.verified("Smith^Jane", NOW, ReviewStatus.REJECTED).text.startswith("AI RESULT REJECTED BY")
    assert Banner.verified("Smith^Jane", NOW, ReviewStatus.PENDING) == Banner.unverified()


def test_verified_page_changes_only_the_banner(synthetic: Synthetic) -> None:
    """A verified page differs from the draft's in the banner band only, which turns green."""
    draft = _synthetic_render(synthetic, Banner.unverified())
    signed = _synthetic_render(synthetic, Banner.verified("Smith^Jane", NOW, ReviewStatus.SIGNED_OFF))
    assert _banner_colour(signed) == BANNER_COLOURS[BannerKind.VERIFIED]
    assert np.array_equal(draft[BANNER_HEIGHT + 1 :], signed[BANNER_HEIGHT + 1 :])


def test_the_page_states_the_basal_rule_under_the_model(synthetic: Synthetic) -> None:
    """Each rule adds its own text to the values column (a result that records none adds nothing);
    the frames and the curve, left of that column, are the same."""

    def page(rule: BasalRule | None) -> npt.NDArray[np.uint8]:
        ruled = replace(synthetic, result=replace(synthetic.result, basal_rule=rule))
        return _synthetic_render(ruled, Banner.unverified())

    pages = {rule: page(rule) for rule in (None, BasalRule.PER_PHASE, BasalRule.EVERY_PHASE)}
    unrecorded = pages[None]
    for rule in (BasalRule.PER_PHASE, BasalRule.EVERY_PHASE):
        rows, columns = np.nonzero((pages[rule] != unrecorded).any(axis=-1))
        assert rows.size, f"{rule} is not on the page"
        assert columns.min() >= COLUMN_LEFT, "the frames or the curve changed"
    assert not np.array_equal(pages[BasalRule.PER_PHASE], pages[BasalRule.EVERY_PHASE])


def test_more_flags_than_the_page_holds_leave_the_model_and_the_rule_on_the_page(
    synthetic: Synthetic,
) -> None:
    """Every QC flag at once, and the rule that takes two lines: the flags that fit are listed, the
    last line says how many more the SR lists, and nothing is drawn in the page's bottom margin."""
    every_flag = tuple(str(flag) for flag in QcFlag)
    crowded = replace(
        synthetic, result=replace(synthetic.result, qc_flags=every_flag, basal_rule=BasalRule.EVERY_PHASE)
    )
    column = _synthetic_render(crowded, Banner.unverified())[:, COLUMN_LEFT:]
    drawn = np.nonzero((column != BACKGROUND).any(axis=(1, 2)))[0]
    assert drawn.max() < HEIGHT - MARGIN, "text runs into the bottom margin or off the page"
    lines = _flag_lines([QcFlag(flag).info.meaning for flag in every_flag], room=6)
    assert len(lines) <= 6 and lines[-1][1].endswith("more: see the report (SR)")
    shown = sum(number == 0 for number, _ in lines[:-1])
    assert lines[-1] == (0, f"{len(every_flag) - shown} more: see the report (SR)")


def test_contours_of_blood_pool_and_myocardium_are_drawn_on_the_frames(case: Case) -> None:
    """Both frame panels carry blood-pool contour pixels; the ED panel also myocardium contour pixels."""
    rgb = _render(case, Banner.unverified())
    panels = rgb[PANEL_TOP : PANEL_TOP + PANEL_SIZE]
    ed_panel, es_panel = panels[:, 16 : 16 + PANEL_SIZE], panels[:, 32 + PANEL_SIZE : 32 + 2 * PANEL_SIZE]
    for panel in (ed_panel, es_panel):
        assert (panel == BLOOD_POOL_COLOUR).all(axis=-1).sum() > 100
    assert (ed_panel == MYOCARDIUM_COLOUR).all(axis=-1).sum() > 100


def test_patient_orientation_names_the_dominant_axes() -> None:
    """Patient Orientation follows the rows' and columns' dominant axes: axial is L/P, Sunnybrook SAX F/R."""
    assert patient_orientation([1, 0, 0, 0, 1, 0]) == ("L", "P")
    assert patient_orientation([-0.104592, 0.346381, -0.932245, -0.733192, -0.660188, -0.163037]) == (
        "F",
        "R",
    )
    with pytest.raises(ReportError):
        patient_orientation([1, 0, 0])


def test_secondary_capture_of_a_real_stack_is_valid_and_filed_in_the_study(
    case: Case, tmp_path: Path
) -> None:
    """The SC passes dciodvfy (bar source UIDs), keeps its pixels and the study, declares burned-in text."""
    rgb = _render(case, Banner.unverified())
    source = case.sources.ed_image
    sc = build_sc(
        rgb,
        source,
        series_instance_uid="1.2.826.0.1.3680043.10.999.91.1",
        sop_instance_uid="1.2.826.0.1.3680043.10.999.91.2",
        instance_number=1,
        review=ReviewStatus.PENDING,
        now=NOW,
        referenced_images=[case.sources.ed_image, case.sources.es_image],
    )
    validation = dciodvfy(sc, tmp_path / "sc.dcm", case.source_uids)
    assert validation.errors == (), validation.output
    back = read_back(tmp_path / "sc.dcm")
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.StudyInstanceUID == source.StudyInstanceUID == case.result.study_instance_uid
    assert (back.PatientName, back.PatientID) == (source.PatientName, source.PatientID)
    assert (back.PatientBirthDate, back.StudyDate) == ("", "")
    assert back.BurnedInAnnotation == "YES"
    assert back.PhotometricInterpretation == "RGB"
    assert (
        back.SeriesDescription
        == SERIES_DESCRIPTIONS[ReviewStatus.PENDING]
        == "AI LV volumes summary - UNVERIFIED"
    )
    assert np.array_equal(back.pixel_array, rgb)
    assert [item.ReferencedSOPInstanceUID for item in back.SourceImageSequence] == [
        case.sources.ed_image.SOPInstanceUID,
        case.sources.es_image.SOPInstanceUID,
    ]


def test_secondary_capture_refuses_a_non_rgb_page(synthetic: Synthetic) -> None:
    """Only an RGB uint8 page becomes a secondary capture."""
    with pytest.raises(ReportError, match="RGB"):
        build_sc(
            np.zeros((HEIGHT, WIDTH), np.uint8),
            synthetic.headers[0][0],
            series_instance_uid="1.2.3.4",
            sop_instance_uid="1.2.3.5",
            instance_number=1,
            review=ReviewStatus.PENDING,
            now=NOW,
        )


def test_synthetic_secondary_capture_builds_without_shared_data(synthetic: Synthetic, tmp_path: Path) -> None:
    """A synthetic page from a header with invalid dates becomes a verified SC that dciodvfy accepts."""
    rgb = _synthetic_render(synthetic, Banner.verified("Smith^Jane", NOW, ReviewStatus.SIGNED_OFF))
    source = synthetic.headers[1][SYNTHETIC_ED]
    sc = build_sc(
        rgb,
        source,
        series_instance_uid="1.2.826.0.1.3680043.10.999.91.3",
        sop_instance_uid="1.2.826.0.1.3680043.10.999.91.4",
        instance_number=2,
        review=ReviewStatus.SIGNED_OFF,
        now=NOW,
    )
    validation = dciodvfy(sc, tmp_path / "sc.dcm", uids_of([source]))
    assert validation.errors == (), validation.output
    assert sc.SeriesDescription == "AI LV volumes summary - VERIFIED"
    assert sc.PatientOrientation == ["L", "P"]
