"""Unit tests for LV volumes, ED/ES, EF, SV and mass from mask areas (node.inference.measurements)."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference.measurements import MYOCARDIAL_DENSITY_G_PER_ML, measure, volume_curve_ml

PIXEL_AREA_MM2 = 1.25 * 1.25
SLICE_SPACING_MM = 8.0


def test_volume_curve_sums_slices_times_pixel_area_times_spacing() -> None:
    """Volume per phase = sum over slices of area x pixel area x slice spacing, in mL."""
    areas = np.array([[100, 80, 60], [200, 150, 120], [50, 40, 0]], dtype=np.float64)
    curve = volume_curve_ml(areas, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    expected = np.array([350.0, 270.0, 180.0]) * PIXEL_AREA_MM2 * SLICE_SPACING_MM / 1000.0
    np.testing.assert_allclose(curve, expected)
    assert curve.shape == (3,)


def test_volume_curve_counts_nan_cells_as_zero() -> None:
    """A NaN area (missing slice/phase) contributes nothing to the volume."""
    areas = np.array([[100.0, np.nan], [np.nan, 30.0]])
    curve = volume_curve_ml(areas, 1.0, 1000.0)
    np.testing.assert_allclose(curve, [100.0, 30.0])


def _cycle(phases: int, ed: int, es: int) -> np.ndarray:
    """A (phases,) factor in [0.4, 1.0] peaking at ``ed`` and bottoming at ``es``."""
    shape = np.empty(phases)
    for phase in range(phases):
        # Piecewise-cosine between ED and ES, going forward cyclically.
        to_es = (es - ed) % phases
        offset = (phase - ed) % phases
        t = offset / to_es if offset <= to_es else 1.0 - (offset - to_es) / (phases - to_es)
        shape[phase] = 1.0 - 0.6 * (1 - np.cos(np.pi * t)) / 2
    return shape


def test_measure_takes_ed_and_es_from_the_curve_not_frame_order() -> None:
    """ED is the argmax and ES the argmin of the volume curve, even with ED at phase 18 of 20."""
    cycle = _cycle(20, ed=18, es=7)
    per_slice = np.array([300.0, 900.0, 1200.0, 800.0, 200.0])
    blood = per_slice[:, None] * cycle[None, :]
    myo = np.full_like(blood, 400.0) + np.arange(20)[None, :]  # differs per phase: mass must use ED
    result = measure(blood, myo, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    curve = volume_curve_ml(blood, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    assert result.ed_phase == 18
    assert result.es_phase == 7
    assert result.edv_ml == pytest.approx(curve[18])
    assert result.esv_ml == pytest.approx(curve[7])
    assert result.volume_curve_ml == pytest.approx(tuple(curve))


def test_measure_ef_sv_and_mass_formulas() -> None:
    """SV = EDV - ESV, EF = 100 x SV / EDV, LV mass = myocardium volume at ED x 1.05 g/mL."""
    cycle = _cycle(20, ed=18, es=7)
    blood = np.array([500.0, 1000.0, 700.0])[:, None] * cycle[None, :]
    myo = np.array([300.0, 350.0, 320.0])[:, None] * (1.0 + 0.01 * np.arange(20))[None, :]
    result = measure(blood, myo, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    edv = 2200.0 * PIXEL_AREA_MM2 * SLICE_SPACING_MM / 1000.0
    esv = 0.4 * edv
    assert result.edv_ml == pytest.approx(edv)
    assert result.esv_ml == pytest.approx(esv)
    assert result.sv_ml == pytest.approx(edv - esv)
    assert result.ef_pct == pytest.approx(60.0)
    myo_ed_ml = 970.0 * 1.18 * PIXEL_AREA_MM2 * SLICE_SPACING_MM / 1000.0
    assert MYOCARDIAL_DENSITY_G_PER_ML == 1.05
    assert result.lv_mass_g == pytest.approx(myo_ed_ml * 1.05)


def test_measure_treats_nan_areas_as_zero() -> None:
    """NaN cells give the same result as zeros in their place."""
    blood = np.array([[100.0, 60.0, 80.0], [200.0, 120.0, 150.0]])
    myo = np.full_like(blood, 50.0)
    with_nan = blood.copy()
    with_nan[0, 1] = np.nan
    with_zero = blood.copy()
    with_zero[0, 1] = 0.0
    assert measure(with_nan, myo, 1.0, 10.0) == measure(with_zero, myo, 1.0, 10.0)


def test_measure_empty_masks_give_zero_ef_not_division_error() -> None:
    """All-zero areas give EDV 0 and EF 0 instead of dividing by zero."""
    zeros = np.zeros((3, 4))
    result = measure(zeros, zeros, 1.0, 10.0)
    assert result.edv_ml == 0.0
    assert result.ef_pct == 0.0
