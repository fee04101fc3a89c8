"""Fitting the QC calibration (``python -m models.evaluate --fit``) on synthetic good and bad results."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="models.evaluate needs torch (the train extra)")

from models.evaluate import TERM_DIRECTIONS, Case, _failed, _summary, fit_calibration, recalibrated
from node.inference.qc import QcFeatures, QcFlag


def _case(index: int, off: bool, companion: float, augmented: float) -> Case:
    """A result 3 % (good) or 25 % (off) from its reference EDV, with the given disagreements."""
    ref_edv, ref_esv = 150.0, 60.0
    edv = ref_edv * (1.25 if off else 1.03)
    features = QcFeatures(augmented, 0.05, 0.1, ref_esv, edv, companion_disagreement=companion)
    return Case(
        "synthetic", "none", f"case{index}", ref_edv, ref_esv, edv, ref_esv, 0.9, 0.9, "ok", (), 0.5, features
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
    not), the fit weighs it, ``check_below`` marks every off result, and few good ones are ``check``."""
    cases = _cases()
    calibration, loo_auc = fit_calibration(cases)
    assert calibration.coefficients["log_companion_disagreement"] < 0
    assert abs(calibration.coefficients["log_companion_disagreement"]) > abs(
        calibration.coefficients["log_disagreement"]
    )
    reported = recalibrated(cases, calibration)
    summary = _summary(reported)
    assert summary["off_checked"] == 1.0
    assert summary["good_checked"] <= 0.25
    assert loo_auc >= 0.9
    for case in reported:
        flagged = QcFlag.UNSTABLE_SEGMENTATION in case.flags
        assert flagged == (case.confidence < calibration.check_below)
        assert (case.status == "check") == flagged


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
