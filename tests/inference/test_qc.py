"""Unit tests for quality control: status, flags and calibrated confidence (node.inference.qc)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from node.domain import QcStatus
from node.inference.card import QcCalibrationSpec
from node.inference.qc import (
    CALIBRATION_TERMS,
    DISAGREEMENT_FLOOR,
    EDV_RANGE_ML,
    ESV_RANGE_ML,
    Calibration,
    QcFeatures,
    QcFlag,
    QualityReport,
    assess,
    coverage_flags,
    curve_roughness,
    flag_text,
    fragmented_fraction,
    qc_status,
)
from node.inference.registry import DEFAULT_MODEL_DIR, find_model
from node.pipeline.measure import StackMeasurer

PHASES = 20
#: A smooth cycle between ESV 60 mL and EDV 150 mL.
SMOOTH_CURVE = 105.0 + 45.0 * np.cos(2 * np.pi * np.arange(PHASES) / PHASES)
#: ED blood-pool volume per slice (mL), tapering to little at both ends (150 mL in all).
CLEAN_ED_ML = np.array([4.0, 18.0, 30.0, 36.0, 32.0, 22.0, 8.0])
#: A calibration like a fitted one: more disagreement, less confidence; 50 % at 8 % disagreement.
CALIBRATION = Calibration(
    intercept=2.0 * float(np.log(0.08)), coefficients={"log_disagreement": -2.0}, check_below=0.5
)
#: A good segmentation: it hardly changes under test-time augmentation.
STEADY = QcFeatures(disagreement=0.01, uncertain=0.05, basal_share=0.1, esv_ml=60.0, edv_ml=150.0)


def _clean(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "edv_ml": 150.0,
        "esv_ml": 60.0,
        "ef_pct": 60.0,
        "curve_ml": SMOOTH_CURVE,
        "blood_pool_ed_ml": CLEAN_ED_ML,
        "base_slice": 0,
        "base_closed": True,
        "features": STEADY,
        "fragment_fraction": 0.0,
        "stack_flags": (),
        "calibration": CALIBRATION,
    }
    arguments.update(overrides)
    return arguments


def _assess(**overrides: Any) -> QualityReport:
    return assess(**_clean(**overrides))


def test_clean_steady_case_is_ok_with_high_confidence() -> None:
    """A plausible, smooth, steady, well-covered result carries no flags, is ok and confident."""
    report = _assess()
    assert report.flags == ()
    assert report.status == QcStatus.OK
    assert report.confidence > 0.95


def test_every_flag_says_whether_it_asks_for_a_check_in_plain_words_and_a_code() -> None:
    """Each flag has a reader-facing explanation and an SR code; notes are exactly the flags that say
    what was done rather than that the volumes may be wrong."""
    for flag in QcFlag:
        assert flag.info.text.endswith(".") and flag.info.code.startswith("QC-")
    notes = {flag for flag in QcFlag if not flag.info.check}
    assert notes == {
        QcFlag.MISSING_PHASES,
        QcFlag.IRREGULAR_SLICE_SPACING,
        QcFlag.INCONSISTENT_GEOMETRY,
        QcFlag.DUPLICATE_POSITIONS_REPLACED,
        QcFlag.INCONSISTENT_FRAME_OF_REFERENCE,
        QcFlag.BASAL_SLICES_EXCLUDED,
        QcFlag.DETACHED_LV_REMOVED,
        # On the validation data it marked 58 of 86 good results and 12 of 29 bad ones: a note.
        QcFlag.INCOMPLETE_COVERAGE_BASE,
    }
    assert flag_text("some_flag_of_a_newer_node") == "some flag of a newer node"


def test_notes_alone_leave_a_result_ok_and_a_check_flag_or_an_unknown_name_makes_it_check() -> None:
    """Slices left out or a regrouped frame of reference are notes: still ok; any check flag, or a
    flag this node does not know, makes the result check."""
    noted = _assess(stack_flags=("inconsistent_frame_of_reference", "basal_slices_excluded"))
    assert noted.status == QcStatus.OK and len(noted.flags) == 2
    assert _assess(stack_flags=("missing_slices",)).status == QcStatus.CHECK
    assert qc_status(("basal_slices_excluded",)) == QcStatus.OK
    assert qc_status(("flag_of_a_newer_node",)) == QcStatus.CHECK
    assert qc_status(()) == QcStatus.OK


def test_unstable_segmentation_is_check_with_low_confidence() -> None:
    """A segmentation whose volumes move 30 % under test-time augmentation is check, with a confidence
    under the calibration's level and the flag that says why; one moving 1 % is ok."""
    shaky = _assess(
        features=QcFeatures(disagreement=0.3, uncertain=0.2, basal_share=0.3, esv_ml=60.0, edv_ml=150.0)
    )
    assert shaky.status == QcStatus.CHECK
    assert shaky.flags == (QcFlag.UNSTABLE_SEGMENTATION,)
    assert shaky.confidence < CALIBRATION.check_below < _assess().confidence


def test_confidence_follows_the_calibration() -> None:
    """The confidence is the card's logistic function of the named terms: 50 % where the logit is 0,
    falling as the disagreement grows, unaffected by terms the calibration does not weigh."""
    at_level = QcFeatures(disagreement=0.08, uncertain=0.9, basal_share=0.9, esv_ml=5.0, edv_ml=50.0)
    assert CALIBRATION.confidence(at_level) == pytest.approx(0.5)
    values = [
        CALIBRATION.confidence(QcFeatures(d, 0.05, 0.1, 60.0, 150.0)) for d in (0.001, 0.01, 0.05, 0.2, 1.0)
    ]
    assert values == sorted(values, reverse=True) and values[0] > 0.99 and values[-1] < 0.01
    weighted = Calibration(0.0, {"log_disagreement": -1.0, "basal_share": -4.0}, 0.5)
    assert weighted.confidence(QcFeatures(0.05, 0.05, 0.5, 60.0, 150.0)) < weighted.confidence(
        QcFeatures(0.05, 0.05, 0.0, 60.0, 150.0)
    )
    assert CALIBRATION.confidence(QcFeatures(float("inf"), 0.05, 0.1, 60.0, 150.0)) == 0.0


def test_coverage_flag_at_the_apex_when_a_large_part_may_lie_beyond() -> None:
    """Half the apical end slice's volume over 5 % of EDV asks for a check; a small apical cap does not."""
    volumes = CLEAN_ED_ML.copy()
    volumes[-1] = 20.0
    assert coverage_flags(volumes, base_slice=0, base_closed=True) == [QcFlag.INCOMPLETE_COVERAGE_APEX]
    report = _assess(blood_pool_ed_ml=volumes)
    assert report.flags == ("incomplete_coverage_apex",) and report.status == QcStatus.CHECK
    assert coverage_flags(CLEAN_ED_ML, base_slice=0, base_closed=True) == []
    flipped = volumes[::-1].copy()  # base last: the apex is the first slice
    assert coverage_flags(flipped, base_slice=6, base_closed=True) == [QcFlag.INCOMPLETE_COVERAGE_APEX]


def test_coverage_at_the_base_is_a_note_and_only_when_the_base_never_closes() -> None:
    """A large basal slice is normal when it turns atrium (or empty) in some phase; one that is ventricle
    all through the cycle is noted (the stack may stop short of the base) without asking for a check.
    With the base unknown, the first and last slice ask for a check."""
    volumes = CLEAN_ED_ML.copy()
    volumes[0] = 30.0
    assert coverage_flags(volumes, base_slice=0, base_closed=True) == []
    assert coverage_flags(volumes, base_slice=0, base_closed=False) == [QcFlag.INCOMPLETE_COVERAGE_BASE]
    assert _assess(blood_pool_ed_ml=volumes, base_closed=False).status == QcStatus.OK
    assert coverage_flags(volumes) == [QcFlag.INCOMPLETE_COVERAGE_FIRST_SLICE]  # base unknown
    assert _assess(blood_pool_ed_ml=volumes, base_slice=None).status == QcStatus.CHECK


def test_coverage_flags_silent_on_clean_and_empty_stacks() -> None:
    """A tapering stack and an all-empty stack raise no coverage flag."""
    assert coverage_flags(CLEAN_ED_ML) == []
    assert coverage_flags(np.zeros(6)) == []


def test_jagged_curve_flag() -> None:
    """A volume curve that zig-zags between phases is flagged; a smooth one is not."""
    zigzag = SMOOTH_CURVE + 20.0 * (-1.0) ** np.arange(PHASES)
    assert curve_roughness(SMOOTH_CURVE) < 0.1
    assert curve_roughness(zigzag) > 0.5
    assert _assess(curve_ml=zigzag).flags == ("jagged_volume_curve",)


@pytest.mark.parametrize(
    ("edv", "esv", "ef"),
    [(600.0, 240.0, 60.0), (150.0, 3.0, 88.0), (8.0, 4.0, 50.0), (520.0, 495.0, 5.5)],
)
def test_implausible_volume_flag(edv: float, esv: float, ef: float) -> None:
    """EDV or ESV outside the population range is flagged as an implausible volume."""
    assert "implausible_volume" in _assess(edv_ml=edv, esv_ml=esv, ef_pct=ef).flags


@pytest.mark.parametrize("ef", [3.0, 90.0])
def test_implausible_ef_flag(ef: float) -> None:
    """An ejection fraction outside 5-85% is flagged as implausible."""
    assert _assess(ef_pct=ef).flags == ("implausible_ef",)


def test_fragmented_fraction_of_two_blobs() -> None:
    """fragmented_fraction is the share of the mask outside its largest connected component."""
    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:15] = True  # 100 px
    mask[30:33, 30:33] = True  # 9 px
    assert fragmented_fraction(mask) == pytest.approx(9 / 109)
    single = np.zeros((40, 40), bool)
    single[5:15, 5:15] = True
    assert fragmented_fraction(single) == 0.0
    assert fragmented_fraction(np.zeros((40, 40), bool)) == 0.0


def test_fragmented_mask_flag() -> None:
    """A fragmented fraction above 5% flags a fragmented mask."""
    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:15] = True
    mask[30:33, 30:33] = True
    assert _assess(fragment_fraction=fragmented_fraction(mask)).flags == ("fragmented_mask",)
    assert _assess(fragment_fraction=0.01).flags == ()


def test_stack_flags_are_passed_through() -> None:
    """Flags raised while building the stack appear in the report, sorted with the QC flags."""
    report = _assess(stack_flags=("missing_slices", "irregular_slice_spacing"), ef_pct=90.0)
    assert report.flags == ("implausible_ef", "irregular_slice_spacing", "missing_slices")


def test_population_ranges_match_dsb2_training_labels(shared_data: Path) -> None:
    """ESV_RANGE_ML and EDV_RANGE_ML are the min/max of Systole and Diastole in dsb2/train.csv."""
    path = shared_data / "dsb2" / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    systole = [float(row["Systole"]) for row in rows]
    diastole = [float(row["Diastole"]) for row in rows]
    assert (min(systole), max(systole)) == ESV_RANGE_ML
    assert (min(diastole), max(diastole)) == EDV_RANGE_ML


def test_ejection_fraction_term() -> None:
    """The calibration may weigh the ejection fraction (ESV small against EDV: a border error weighs
    more against ESV); a result without EDV gives 0, never a division by zero."""
    assert QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0).terms()["ejection_fraction"] == pytest.approx(0.6)
    assert QcFeatures(0.01, 0.05, 0.1, 0.0, 0.0).terms()["ejection_fraction"] == 0.0
    assert tuple(QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0, 0.0, 0.05).terms()) == CALIBRATION_TERMS


def test_companion_disagreement_term() -> None:
    """The companion's disagreement is a term of its own: a model without a companion (0) sits at the
    floor, and where the calibration weighs it the confidence falls as the two networks part."""
    assert QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0).terms()["log_companion_disagreement"] == pytest.approx(
        math.log(DISAGREEMENT_FLOOR)
    )
    weighted = Calibration(-6.0, {"log_disagreement": -0.2, "log_companion_disagreement": -1.5}, 0.5)
    values = [
        weighted.confidence(QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0, companion_disagreement=d))
        for d in (0.0, 0.02, 0.1, 0.3)
    ]
    assert values == sorted(values, reverse=True) and values[0] > 0.99 and values[-1] < 0.5
    assert CALIBRATION.confidence(QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0, 0.3)) == CALIBRATION.confidence(
        STEADY
    )


def test_scale_sensitivity_term() -> None:
    """How much the volume moves with the heart's apparent size is a term as measured; where the
    calibration weighs it, the confidence falls as the volume moves more, and a result where it was
    not run stores no such feature."""
    assert QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0, scale_sensitivity=0.2).terms()["scale_sensitivity"] == 0.2
    unmeasured = QcFeatures(0.01, 0.05, 0.1, 60.0, 150.0)
    assert "scale_sensitivity" not in unmeasured.terms()
    assert "scale_sensitivity" not in unmeasured.measured()
    weighted = Calibration(4.0, {"scale_sensitivity": -15.0}, 0.5)
    values = [
        weighted.confidence(QcFeatures(None, 0.05, 0.1, 60.0, 150.0, scale_sensitivity=s))
        for s in (0.0, 0.1, 0.3, 0.5)
    ]
    assert values == sorted(values, reverse=True) and values[0] > 0.95 and values[-1] < 0.05
    with pytest.raises(ValueError, match="not measured: scale_sensitivity"):
        weighted.confidence(unmeasured)


def test_an_augmentation_that_did_not_run_gives_no_term() -> None:
    """Where the test-time augmentation was not run (its disagreement None), the result stores no such
    feature and the confidence is the other terms'; a calibration that weighs it refuses to guess."""
    features = QcFeatures(None, 0.05, 0.1, 60.0, 150.0, companion_disagreement=0.03)
    assert "log_disagreement" not in features.terms()
    assert "disagreement" not in features.measured()
    assert features.measured()["companion_disagreement"] == 0.03
    without = Calibration(2.0, {"log_companion_disagreement": -0.5}, 0.5)
    assert without.confidence(features) == pytest.approx(1 / (1 + math.exp(-(2.0 - 0.5 * math.log(0.03)))))
    with pytest.raises(ValueError, match="not measured: log_disagreement"):
        Calibration(2.0, {"log_disagreement": -1.0}, 0.5).confidence(features)


@pytest.mark.parametrize(
    ("weighs", "augment", "rescale"),
    [
        ({"log_uncertain": -2.0}, False, False),
        ({"log_disagreement": -2.0}, True, False),
        ({"scale_sensitivity": -2.0}, False, True),
        ({"log_disagreement": -1.0, "scale_sensitivity": -1.0}, True, True),
    ],
)
def test_a_measurer_runs_only_the_augmentations_its_card_weighs(
    weighs: dict[str, float], augment: bool, rescale: bool
) -> None:
    """Each test-time augmentation runs the network again, so by default a measurer runs mirror and
    contrast only for a card that weighs their disagreement, and scale only for one that weighs the
    scale sensitivity; ``augment`` set either way runs both or neither (the evaluation runs both)."""
    card = find_model(DEFAULT_MODEL_DIR, "lvseg-unet").card
    weighted = card.model_copy(
        update={"qc_calibration": QcCalibrationSpec(intercept=1.0, coefficients=weighs, check_below=0.5)}
    )
    segmenter = SimpleNamespace(card=weighted, companion=None)
    measurer = StackMeasurer(segmenter)  # type: ignore[arg-type]
    assert (measurer.augment, measurer.rescale) == (augment, rescale)
    for forced in (True, False):
        chosen = StackMeasurer(segmenter, augment=forced)  # type: ignore[arg-type]
        assert (chosen.augment, chosen.rescale) == (forced, forced)
