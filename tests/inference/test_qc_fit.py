"""Fitting the QC calibration (``python -m models.evaluate --fit``) on synthetic good and bad results."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch", reason="models.evaluate needs torch (the train extra)")

from models.evaluate import (
    TERM_DIRECTIONS,
    Case,
    _design,
    _failed,
    _pair_out_auc,
    _summary,
    fit_calibration,
    recalibrated,
)
from node.inference.qc import CALIBRATION_TERMS, QcFeatures, QcFlag


def _case(
    index: int, off: bool, companion: float, augmented: float, esv: float = 60.0, uncertain: float = 0.05
) -> Case:
    """A result whose EDV is 3 % (good) or 25 % (off) above its reference, with the given disagreements
    and ESV; good and off results measure the same volumes, so only the disagreements tell them apart.
    The scale sensitivity is the same for every result: it tells nothing."""
    edv = 150.0
    ref_edv = edv / (1.25 if off else 1.03)
    features = QcFeatures(augmented, uncertain, 0.1, esv, edv, companion, scale_sensitivity=0.05)
    return Case(
        "synthetic", "none", f"case{index}", ref_edv, esv, edv, esv, 0.9, 0.9, "ok", (), 0.5, features
    )


def _cases() -> list[Case]:
    rng = np.random.default_rng(7)
    good = [
        _case(i, False, float(rng.uniform(0.003, 0.05)), float(rng.uniform(0.005, 0.08))) for i in range(40)
    ]
    bad = [
        _case(40 + i, True, float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.005, 0.08))) for i in range(8)
    ]
    return good + bad


def test_fitted_calibration_checks_every_off_result_and_few_good_ones() -> None:
    """Where the companion's disagreement tells the off results apart (and test-time augmentation does
    not), the fit weighs it alone, ``check_below`` marks every off result, few good ones are ``check``,
    and the figures held out by patient say so too."""
    cases = _cases()
    calibration, held_out = fit_calibration(cases)
    assert set(calibration.coefficients) == {"log_companion_disagreement"}
    assert calibration.coefficients["log_companion_disagreement"] < 0
    reported = recalibrated(cases, calibration)
    summary = _summary(reported)
    assert summary["off_checked"] == 1.0
    assert summary["good_checked"] <= 0.25
    assert held_out.patients == len(cases)
    assert held_out.auc >= 0.9
    # Held out, check_below comes from the other off results, so the one nearest the good ones (the
    # companion disagreeing least) is above it: 7 of the 8 are caught.
    assert held_out.off_checked == 7 / 8 and held_out.good_checked <= 0.25
    for case in reported:
        flagged = QcFlag.UNSTABLE_SEGMENTATION in case.flags
        assert flagged == (case.confidence < calibration.check_below)
        assert (case.status == "check") == flagged


def _shifted(cases: list[Case], shifts: int) -> list[Case]:
    """Each case under ``shifts`` shifts: the same patient, the same volumes and features."""
    return [replace(case, shift=f"shift{k}") for case in cases for k in range(shifts)]


def test_a_term_that_singles_out_one_failing_patient_is_left_out() -> None:
    """Three failing patients, each under five shifts. The companion's disagreement is high on two; the
    third fails with a disagreement like the good results', but with an unusually small ESV. Judged
    case by case, the ESV helps (that patient's other shifts teach it); held out by patient it cannot,
    since no other failing patient has a small ESV, so the fit leaves it out."""
    rng = np.random.default_rng(5)
    good = [
        _case(i, False, float(rng.uniform(0.003, 0.06)), 0.02, esv=float(rng.uniform(40.0, 90.0)))
        for i in range(20)
    ]
    bad = [
        _case(20, True, 0.03, 0.02, esv=20.0),
        _case(21, True, 0.15, 0.02, esv=60.0),
        _case(22, True, 0.2, 0.02, esv=70.0),
    ]
    cases = _shifted(good + bad, 5)
    design = _design(cases, CALIBRATION_TERMS)
    y = np.array([0.0 if case.off else 1.0 for case in cases])
    by_case = [(case.case, case.shift) for case in cases]
    companion = ["log_companion_disagreement"]
    assert _pair_out_auc(design, y, by_case, [*companion, "log_esv"]) > _pair_out_auc(
        design, y, by_case, companion
    ), "case by case, the ESV should look useful"
    calibration, held_out = fit_calibration(cases)
    assert held_out.patients == 23
    assert set(calibration.coefficients) == set(companion)
    assert calibration.coefficients["log_companion_disagreement"] < 0


def test_a_second_term_joins_where_it_catches_failures_the_first_misses() -> None:
    """Four failing patients under three shifts each: two fail where the companion disagrees, two where
    many pixels are uncertain. Each term alone catches half; held out by patient, each kind still has
    one patient left to learn from, so both terms join and every off result is ``check``."""
    rng = np.random.default_rng(3)
    good = [
        _case(i, False, float(rng.uniform(0.003, 0.05)), 0.02, uncertain=float(rng.uniform(0.02, 0.08)))
        for i in range(24)
    ]
    bad = [
        _case(24, True, 0.2, 0.02, uncertain=0.05),
        _case(25, True, 0.25, 0.02, uncertain=0.04),
        _case(26, True, 0.02, 0.02, uncertain=0.3),
        _case(27, True, 0.03, 0.02, uncertain=0.4),
    ]
    cases = _shifted(good + bad, 3)
    calibration, held_out = fit_calibration(cases)
    assert set(calibration.coefficients) == {"log_uncertain", "log_companion_disagreement"}
    assert held_out.auc > 0.95
    assert _summary(recalibrated(cases, calibration))["off_checked"] == 1.0


def test_off_results_from_a_single_patient_are_refused() -> None:
    """With one failing patient, every held-out fit has no failure to learn from: no term could be
    judged, and the card would mark every result ``check``. The fit says so instead."""
    good = [_case(i, False, 0.01 + 0.001 * i, 0.02) for i in range(20)]
    cases = _shifted([*good, _case(20, True, 0.2, 0.02)], 5)
    with pytest.raises(ValueError, match="from 1 patient"):
        fit_calibration(cases)


def test_terms_that_tell_nothing_apart_are_refused() -> None:
    """Off and good results with the same features: no term earns a place, and a card whose confidence
    is one value would mark every result ``check``; the fit refuses."""
    cases = [_case(i, i % 4 == 0, 0.02, 0.02) for i in range(40)]
    with pytest.raises(ValueError, match="no term tells off results apart"):
        fit_calibration(cases)


def test_a_result_without_ventricle_is_left_out_of_the_fit_and_stays_check() -> None:
    """No LV found: counted as off and ``check``, but its infinite features never enter the fit."""
    failed = _failed("synthetic", "none", "empty", 150.0, 60.0)
    assert failed.off and failed.status == "check"
    cases = [*_cases(), failed]
    calibration, _ = fit_calibration(cases)
    assert np.isfinite(calibration.intercept)
    (kept,) = [c for c in recalibrated(cases, calibration) if c.case == "empty"]
    assert kept.status == "check" and kept.confidence == 0.0


def test_a_term_fitted_against_its_direction_is_left_out() -> None:
    """Where, by chance, the good results move more under test-time augmentation than the off ones, the
    fit would let instability raise the confidence; that term is left out and every weight kept
    points its way (more disagreement, less confidence)."""
    rng = np.random.default_rng(11)
    good = [
        _case(i, False, float(rng.uniform(0.003, 0.05)), float(rng.uniform(0.05, 0.2))) for i in range(40)
    ]
    bad = [
        _case(40 + i, True, float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.002, 0.01))) for i in range(8)
    ]
    calibration, _ = fit_calibration(good + bad)
    assert "log_disagreement" not in calibration.coefficients
    assert calibration.coefficients["log_companion_disagreement"] < 0
    for name, weight in calibration.coefficients.items():
        assert TERM_DIRECTIONS.get(name, 0) * weight >= 0, name
