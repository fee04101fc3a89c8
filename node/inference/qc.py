"""Quality control that travels with every result: flags a radiologist can read, and a confidence.

Each check is a pure function over numbers the measurement already has. The flags are the
explanation; the confidence (0-1) only orders the worklist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.inference.measurements import DETACHED_DISTANCE_MM

#: Population range of LV volumes in the Kaggle Second Annual Data Science Bowl training labels
#: (500 volumes, ``dsb2/train.csv``): ESV 4.6-488.6 mL, EDV 10.5-568.6 mL.
ESV_RANGE_ML = (4.6, 488.6)
EDV_RANGE_ML = (10.5, 568.6)
#: Ejection fractions outside this range are physiologically implausible for a measured LV.
EF_RANGE_PCT = (5.0, 85.0)
#: A blood-pool area on an end slice above this fraction of the largest slice's means the LV
#: continues beyond the stack.
COVERAGE_AREA_FRACTION = 0.15
#: Roughness = mean absolute second difference of the (cyclic) volume curve / stroke volume.
JAGGED_ROUGHNESS = 0.25
#: Disagreement between the prediction and a flipped-input prediction, as a fraction of the volume,
#: above which the segmentation is unstable.
FLIP_DISAGREEMENT_FRACTION = 0.08
#: Fraction of an ED/ES blood-pool mask outside its largest connected component.
FRAGMENT_FRACTION = 0.05
#: Detached LV labels (:func:`~node.inference.measurements.remove_detached_lv`) flag the result from
#: this volume in one phase; smaller specks are left out without a flag.
DETACHED_FLAG_ML = 1.0
#: Fraction of LV pixels whose most likely class is uncertain, above which confidence drops to 0.
UNCERTAINTY_SCALE = 0.5

#: Weight of a stack flag this module has no entry for: it still lowers confidence and is reported.
UNKNOWN_FLAG_WEIGHT = 0.3

FLAG_WEIGHTS = {
    "incomplete_coverage_first_slice": 0.35,
    "incomplete_coverage_last_slice": 0.35,
    "jagged_volume_curve": 0.5,
    "flip_disagreement": 0.7,
    "implausible_volume": 1.0,
    "implausible_ef": 0.7,
    "fragmented_mask": 0.4,
    "missing_slices": 0.5,
    "missing_phases": 0.4,
    "irregular_slice_spacing": 0.3,
    "inconsistent_geometry": 0.3,
    "duplicate_positions_replaced": 0.1,
    "inconsistent_frame_of_reference": 0.0,
    "basal_slices_excluded": 0.2,
    "detached_lv_removed": 0.3,
}

#: Plain-language explanation of each flag (for reports and the worklist).
FLAG_TEXT = {
    "incomplete_coverage_first_slice": (
        "LV blood pool reaches the first slice: the stack may not cover the whole ventricle."
    ),
    "incomplete_coverage_last_slice": (
        "LV blood pool reaches the last slice: the stack may not cover the whole ventricle."
    ),
    "jagged_volume_curve": (
        "The LV volume curve over the cardiac cycle is jagged: segmentation varies between phases."
    ),
    "flip_disagreement": (
        "Segmentation changes when the image is mirrored: the model is unsure of this study."
    ),
    "implausible_volume": "EDV or ESV is outside the range seen in a general population.",
    "implausible_ef": "The ejection fraction is outside the physiological range.",
    "fragmented_mask": "The LV blood-pool mask is split into pieces on the ED or ES frames.",
    "missing_slices": "Slices are missing from the stack (a gap in slice positions).",
    "missing_phases": "Some slices lack some cardiac phases; their areas were interpolated.",
    "irregular_slice_spacing": "Slice spacing is irregular.",
    "inconsistent_geometry": "Some images had a different matrix or pixel spacing and were left out.",
    "duplicate_positions_replaced": (
        "Some slice positions were acquired twice; the later acquisition was used."
    ),
    "inconsistent_frame_of_reference": (
        "Images of the stack carry different Frame of Reference UIDs; slices were grouped by geometry."
    ),
    "basal_slices_excluded": (
        "Basal slices that are atrium or outflow tract in part of the cycle (blood pool less than half"
        " surrounded by myocardium) are left out of the volumes and masses."
    ),
    "detached_lv_removed": (
        f"The model labelled LV outside the heart (more than {DETACHED_DISTANCE_MM:.0f} mm from the"
        " ventricle, e.g. stomach or a vessel); those regions are left out, but the model may be"
        " unreliable on this study."
    ),
}


@dataclass(frozen=True)
class QualityReport:
    """Flags (sorted) and a confidence in [0, 1]."""

    flags: tuple[str, ...]
    confidence: float


def coverage_flags(blood_pool_ed_mm2: npt.NDArray[np.floating]) -> list[str]:
    """Flags when the ED blood pool reaches the first or last slice of the stack."""
    areas = np.asarray(blood_pool_ed_mm2, dtype=np.float64)
    largest = float(areas.max()) if areas.size else 0.0
    if largest <= 0:
        return []
    flags = []
    if areas[0] > COVERAGE_AREA_FRACTION * largest:
        flags.append("incomplete_coverage_first_slice")
    if areas[-1] > COVERAGE_AREA_FRACTION * largest:
        flags.append("incomplete_coverage_last_slice")
    return flags


def curve_roughness(curve_ml: npt.NDArray[np.floating]) -> float:
    """Mean absolute cyclic second difference of the volume curve, relative to its range."""
    curve = np.asarray(curve_ml, dtype=np.float64)
    if curve.size < 3:
        return 0.0
    second = np.roll(curve, -1) - 2 * curve + np.roll(curve, 1)
    swing = float(curve.max() - curve.min())
    return float(np.abs(second).mean() / swing) if swing > 0 else 0.0


def fragmented_fraction(mask: npt.NDArray[np.bool_]) -> float:
    """Fraction of a 2-D mask outside its largest connected component."""
    total = int(mask.sum())
    if total == 0:
        return 0.0
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return 0.0
    sizes = np.bincount(labelled.ravel())[1:]
    return float(1.0 - sizes.max() / total)


def assess(
    *,
    edv_ml: float,
    esv_ml: float,
    ef_pct: float,
    curve_ml: npt.NDArray[np.floating],
    blood_pool_ed_mm2: npt.NDArray[np.floating],
    flip_disagreement_ml: float,
    fragment_fraction: float,
    uncertain_fraction: float,
    stack_flags: tuple[str, ...],
) -> QualityReport:
    """Combine every check into flags and a confidence.

    Confidence = exp(-sum of the flags' weights) x (1 - uncertain_fraction / UNCERTAINTY_SCALE),
    clipped to [0, 1]: a clean, certain segmentation is near 1; each flag pulls it down.
    """
    flags = set(stack_flags)
    flags.update(coverage_flags(blood_pool_ed_mm2))
    if curve_roughness(curve_ml) > JAGGED_ROUGHNESS:
        flags.add("jagged_volume_curve")
    if flip_disagreement_ml > FLIP_DISAGREEMENT_FRACTION * max(edv_ml, 1.0):
        flags.add("flip_disagreement")
    if not (EDV_RANGE_ML[0] <= edv_ml <= EDV_RANGE_ML[1] and ESV_RANGE_ML[0] <= esv_ml <= ESV_RANGE_ML[1]):
        flags.add("implausible_volume")
    if not EF_RANGE_PCT[0] <= ef_pct <= EF_RANGE_PCT[1]:
        flags.add("implausible_ef")
    if fragment_fraction > FRAGMENT_FRACTION:
        flags.add("fragmented_mask")
    penalty = sum(FLAG_WEIGHTS.get(flag, UNKNOWN_FLAG_WEIGHT) for flag in flags)
    certainty = max(0.0, 1.0 - uncertain_fraction / UNCERTAINTY_SCALE)
    confidence = float(np.clip(np.exp(-penalty) * certainty, 0.0, 1.0))
    return QualityReport(flags=tuple(sorted(flags)), confidence=confidence)
