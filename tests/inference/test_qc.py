"""Unit tests for quality-control flags and confidence (node.inference.qc)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.inference.qc import (
    EDV_RANGE_ML,
    ESV_RANGE_ML,
    QcFlag,
    QualityReport,
    assess,
    coverage_flags,
    curve_roughness,
    flag_text,
    fragmented_fraction,
)

PHASES = 20
#: A smooth cycle between ESV 60 mL and EDV 150 mL.
SMOOTH_CURVE = 105.0 + 45.0 * np.cos(2 * np.pi * np.arange(PHASES) / PHASES)
#: ED blood-pool area per slice (mm^2), tapering to nearly nothing at both ends.
CLEAN_ED_AREAS = np.array([0.0, 300.0, 900.0, 1200.0, 1000.0, 600.0, 100.0])


def _clean(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "edv_ml": 150.0,
        "esv_ml": 60.0,
        "ef_pct": 60.0,
        "curve_ml": SMOOTH_CURVE,
        "blood_pool_ed_mm2": CLEAN_ED_AREAS,
        "flip_disagreement_ml": 2.0,
        "fragment_fraction": 0.0,
        "uncertain_fraction": 0.0,
        "stack_flags": (),
    }
    arguments.update(overrides)
    return arguments


def _assess(**overrides: Any) -> QualityReport:
    return assess(**_clean(**overrides))


def test_clean_certain_case_has_no_flags_and_full_confidence() -> None:
    """A plausible, smooth, stable, well-covered, certain result carries no flags and confidence 1."""
    report = _assess()
    assert report.flags == ()
    assert report.confidence == pytest.approx(1.0)


def test_every_flag_has_a_weight_a_plain_language_text_and_a_code() -> None:
    """Each flag that can be raised has a weight, a reader-facing explanation and an SR code."""
    for flag in QcFlag:
        assert flag.info.weight >= 0 and flag.info.text.endswith(".") and flag.info.code.startswith("QC-")
    assert flag_text("some_flag_of_a_newer_node") == "some flag of a newer node"


def test_coverage_flag_on_first_slice() -> None:
    """Blood pool on the first slice above the area fraction flags incomplete coverage there only."""
    areas = CLEAN_ED_AREAS.copy()
    areas[0] = 400.0
    assert coverage_flags(areas) == ["incomplete_coverage_first_slice"]
    assert _assess(blood_pool_ed_mm2=areas).flags == ("incomplete_coverage_first_slice",)


def test_coverage_flag_on_last_slice() -> None:
    """Blood pool on the last slice above the area fraction flags incomplete coverage there only."""
    areas = CLEAN_ED_AREAS.copy()
    areas[-1] = 500.0
    assert coverage_flags(areas) == ["incomplete_coverage_last_slice"]
    assert _assess(blood_pool_ed_mm2=areas).flags == ("incomplete_coverage_last_slice",)


def test_coverage_flags_silent_on_clean_and_empty_stacks() -> None:
    """A tapering stack and an all-empty stack raise no coverage flag."""
    assert coverage_flags(CLEAN_ED_AREAS) == []
    assert coverage_flags(np.zeros(6)) == []


def test_jagged_curve_flag() -> None:
    """A volume curve that zig-zags between phases is flagged; a smooth one is not."""
    zigzag = SMOOTH_CURVE + 20.0 * (-1.0) ** np.arange(PHASES)
    assert curve_roughness(SMOOTH_CURVE) < 0.1
    assert curve_roughness(zigzag) > 0.5
    assert _assess(curve_ml=zigzag).flags == ("jagged_volume_curve",)


def test_flip_disagreement_flag() -> None:
    """A flipped-input prediction differing by more than 8% of EDV is flagged."""
    assert _assess(flip_disagreement_ml=0.10 * 150.0).flags == ("flip_disagreement",)
    assert _assess(flip_disagreement_ml=0.05 * 150.0).flags == ()


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


def test_confidence_decreases_with_each_flag() -> None:
    """Confidence = exp(-sum of flag weights): every extra flag lowers it."""
    clean = _assess().confidence
    one = _assess(ef_pct=90.0)
    two = _assess(ef_pct=90.0, flip_disagreement_ml=50.0)
    assert clean > one.confidence > two.confidence > 0.0
    assert one.confidence == pytest.approx(math.exp(-QcFlag.IMPLAUSIBLE_EF.info.weight))
    expected_two = math.exp(-QcFlag.IMPLAUSIBLE_EF.info.weight - QcFlag.FLIP_DISAGREEMENT.info.weight)
    assert two.confidence == pytest.approx(expected_two)


def test_confidence_decreases_with_uncertain_pixels() -> None:
    """Uncertain LV pixels scale confidence down linearly, reaching 0 at the uncertainty scale."""
    assert _assess(uncertain_fraction=0.25).confidence == pytest.approx(0.5)
    assert _assess(uncertain_fraction=0.5).confidence == 0.0
    assert _assess(uncertain_fraction=0.9).confidence == 0.0


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
