"""LV volumes from per-slice, per-phase mask areas: EDV, ESV, EF, SV, myocardial mass.

Volume at a phase = sum over slices of mask area x slice spacing, the spacing taken from positions
along the slice normal. ED and ES are the maximum and minimum of the blood-pool volume curve over
the cardiac cycle, never frame order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Density of myocardium, g/mL (the conventional value used for CMR LV mass).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05
_MM3_PER_ML = 1000.0


@dataclass(frozen=True)
class Measurements:
    """The quantitative result for one stack."""

    edv_ml: float
    esv_ml: float
    ef_pct: float
    sv_ml: float
    lv_mass_g: float
    ed_phase: int
    es_phase: int
    volume_curve_ml: tuple[float, ...]


def volume_curve_ml(
    areas_px: npt.NDArray[np.floating], pixel_area_mm2: float, slice_spacing_mm: float
) -> npt.NDArray[np.float64]:
    """Volume per phase from ``(slices, phases)`` mask areas in pixels (NaN cells count as 0)."""
    areas = np.nan_to_num(np.asarray(areas_px, dtype=np.float64), nan=0.0)
    result: npt.NDArray[np.float64] = areas.sum(axis=0) * pixel_area_mm2 * slice_spacing_mm / _MM3_PER_ML
    return result


def measure(
    blood_pool_px: npt.NDArray[np.floating],
    myocardium_px: npt.NDArray[np.floating],
    pixel_area_mm2: float,
    slice_spacing_mm: float,
) -> Measurements:
    """EDV/ESV (max/min of the blood-pool curve), EF, SV and myocardial mass at ED.

    Parameters
    ----------
    blood_pool_px, myocardium_px
        ``(slices, phases)`` mask areas in pixels.
    pixel_area_mm2
        Row spacing x column spacing, from PixelSpacing (0028,0030).
    slice_spacing_mm
        Distance between adjacent slice centres along the normal.
    """
    curve = volume_curve_ml(blood_pool_px, pixel_area_mm2, slice_spacing_mm)
    ed_phase = int(np.argmax(curve))
    es_phase = int(np.argmin(curve))
    edv = float(curve[ed_phase])
    esv = float(curve[es_phase])
    sv = edv - esv
    ef = 100.0 * sv / edv if edv > 0 else 0.0
    myocardium = volume_curve_ml(myocardium_px, pixel_area_mm2, slice_spacing_mm)
    return Measurements(
        edv_ml=edv,
        esv_ml=esv,
        ef_pct=ef,
        sv_ml=sv,
        lv_mass_g=float(myocardium[ed_phase]) * MYOCARDIAL_DENSITY_G_PER_ML,
        ed_phase=ed_phase,
        es_phase=es_phase,
        volume_curve_ml=tuple(float(v) for v in curve),
    )
