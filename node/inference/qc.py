"""Quality control that travels with every result: flags a radiologist can read, and a confidence.

Each check is a pure function over numbers the measurement already has. The flags are the
explanation; the confidence (0-1) only orders the worklist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.inference.measurements import DETACHED_DISTANCE_MM, LabelMeasurement

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


class QcFlag(StrEnum):
    """Every quality-control flag a result can carry; :meth:`info` holds what belongs to each."""

    INCOMPLETE_COVERAGE_FIRST_SLICE = "incomplete_coverage_first_slice"
    INCOMPLETE_COVERAGE_LAST_SLICE = "incomplete_coverage_last_slice"
    JAGGED_VOLUME_CURVE = "jagged_volume_curve"
    FLIP_DISAGREEMENT = "flip_disagreement"
    IMPLAUSIBLE_VOLUME = "implausible_volume"
    IMPLAUSIBLE_EF = "implausible_ef"
    FRAGMENTED_MASK = "fragmented_mask"
    #: Stack flags (found with the stack, :mod:`node.pipeline.stacks`): a slice lacks some phases;
    #: a gap of about twice the median spacing or more; spacing varies without a missing slice;
    #: images of other Rows, Columns or Pixel Spacing dropped; a position acquired twice; a series'
    #: instances disagree on Frame of Reference UID (0020,0052), series-wide by PS3.3 C.7.4.1.
    MISSING_SLICES = "missing_slices"
    MISSING_PHASES = "missing_phases"
    IRREGULAR_SLICE_SPACING = "irregular_slice_spacing"
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"
    DUPLICATE_POSITIONS_REPLACED = "duplicate_positions_replaced"
    INCONSISTENT_FRAME_OF_REFERENCE = "inconsistent_frame_of_reference"
    #: Measurement flags (:mod:`node.pipeline.measure`).
    BASAL_SLICES_EXCLUDED = "basal_slices_excluded"
    DETACHED_LV_REMOVED = "detached_lv_removed"

    @property
    def info(self) -> FlagInfo:
        """Weight, plain-language text and SR code of the flag."""
        return _FLAGS[self]


@dataclass(frozen=True)
class FlagInfo:
    """What belongs to a :class:`QcFlag`.

    Attributes
    ----------
    weight
        How much the flag lowers the confidence (``exp(-sum of weights)``).
    text
        The explanation a radiologist reads (worklist, SR, CLI).
    code, meaning
        Code value and meaning in the node's private coding scheme (:mod:`node.reports.codes`); the
        meaning doubles as the short text on the secondary capture.
    """

    weight: float
    text: str
    code: str
    meaning: str


_FLAGS: dict[QcFlag, FlagInfo] = {
    QcFlag.INCOMPLETE_COVERAGE_FIRST_SLICE: FlagInfo(
        0.35,
        "LV blood pool reaches the first slice: the stack may not cover the whole ventricle.",
        "QC-COV-FIRST",
        "LV reaches the first slice",
    ),
    QcFlag.INCOMPLETE_COVERAGE_LAST_SLICE: FlagInfo(
        0.35,
        "LV blood pool reaches the last slice: the stack may not cover the whole ventricle.",
        "QC-COV-LAST",
        "LV reaches the last slice",
    ),
    QcFlag.JAGGED_VOLUME_CURVE: FlagInfo(
        0.5,
        "The LV volume curve over the cardiac cycle is jagged: segmentation varies between phases.",
        "QC-JAGGED",
        "Jagged LV volume curve",
    ),
    QcFlag.FLIP_DISAGREEMENT: FlagInfo(
        0.7,
        "Segmentation changes when the image is mirrored: the model is unsure of this study.",
        "QC-FLIP",
        "Segmentation unstable under mirroring",
    ),
    QcFlag.IMPLAUSIBLE_VOLUME: FlagInfo(
        1.0,
        "EDV or ESV is outside the range seen in a general population.",
        "QC-VOLUME",
        "LV volume outside population range",
    ),
    QcFlag.IMPLAUSIBLE_EF: FlagInfo(
        0.7,
        "The ejection fraction is outside the physiological range.",
        "QC-EF",
        "EF outside physiological range",
    ),
    QcFlag.FRAGMENTED_MASK: FlagInfo(
        0.4,
        "The LV blood-pool mask is split into pieces on the ED or ES frames.",
        "QC-FRAGMENT",
        "Fragmented LV blood-pool mask",
    ),
    QcFlag.MISSING_SLICES: FlagInfo(
        0.5,
        "Slices are missing from the stack (a gap in slice positions).",
        "QC-MISS-SLICE",
        "Slices missing from the stack",
    ),
    QcFlag.MISSING_PHASES: FlagInfo(
        0.4,
        "Some slices lack some cardiac phases; their areas were interpolated.",
        "QC-MISS-PHASE",
        "Phases missing on some slices",
    ),
    QcFlag.IRREGULAR_SLICE_SPACING: FlagInfo(
        0.3, "Slice spacing is irregular.", "QC-SPACING", "Irregular slice spacing"
    ),
    QcFlag.INCONSISTENT_GEOMETRY: FlagInfo(
        0.3,
        "Some images had a different matrix or pixel spacing and were left out.",
        "QC-GEOMETRY",
        "Images of other geometry left out",
    ),
    QcFlag.DUPLICATE_POSITIONS_REPLACED: FlagInfo(
        0.1,
        "Some slice positions were acquired twice; the later acquisition was used.",
        "QC-DUPLICATE",
        "Repeated slice positions replaced",
    ),
    QcFlag.INCONSISTENT_FRAME_OF_REFERENCE: FlagInfo(
        0.0,
        "Images of the stack carry different Frame of Reference UIDs; slices were grouped by geometry.",
        "QC-FOR",
        "Inconsistent Frame of Reference UIDs",
    ),
    QcFlag.BASAL_SLICES_EXCLUDED: FlagInfo(
        0.2,
        "Basal slices that are atrium or outflow tract in part of the cycle (blood pool less than half"
        " surrounded by myocardium) are left out of the volumes and masses.",
        "QC-BASAL",
        "Basal slices left out of the volumes",
    ),
    QcFlag.DETACHED_LV_REMOVED: FlagInfo(
        0.3,
        f"The model labelled LV outside the heart (more than {DETACHED_DISTANCE_MM:.0f} mm from the"
        " ventricle, e.g. stomach or a vessel); those regions are left out, but the model may be"
        " unreliable on this study.",
        "QC-DETACHED",
        "LV labels outside the heart left out",
    ),
}


def measurement_flags(measured: LabelMeasurement) -> tuple[QcFlag, ...]:
    """The flags of what :func:`~node.inference.measurements.measure_labels` left out."""
    return ((QcFlag.DETACHED_LV_REMOVED,) if measured.detached_ml >= DETACHED_FLAG_ML else ()) + (
        (QcFlag.BASAL_SLICES_EXCLUDED,) if measured.basal_slices else ()
    )


def flag_text(flag: str) -> str:
    """The explanation of a stored flag; a name this node does not know is shown in words."""
    known = QcFlag._value2member_map_.get(flag)
    return known.info.text if isinstance(known, QcFlag) else flag.replace("_", " ")


@dataclass(frozen=True)
class QualityReport:
    """Flags (sorted) and a confidence in [0, 1]."""

    flags: tuple[QcFlag, ...]
    confidence: float


def coverage_flags(blood_pool_ed_mm2: npt.NDArray[np.floating]) -> list[QcFlag]:
    """Flags when the ED blood pool reaches the first or last slice of the stack."""
    areas = np.asarray(blood_pool_ed_mm2, dtype=np.float64)
    largest = float(areas.max()) if areas.size else 0.0
    if largest <= 0:
        return []
    flags = []
    if areas[0] > COVERAGE_AREA_FRACTION * largest:
        flags.append(QcFlag.INCOMPLETE_COVERAGE_FIRST_SLICE)
    if areas[-1] > COVERAGE_AREA_FRACTION * largest:
        flags.append(QcFlag.INCOMPLETE_COVERAGE_LAST_SLICE)
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
    stack_flags: Iterable[str],
) -> QualityReport:
    """Combine every check into flags and a confidence.

    Confidence = exp(-sum of the flags' weights) x (1 - uncertain_fraction / UNCERTAINTY_SCALE),
    clipped to [0, 1]: a clean, certain segmentation is near 1; each flag pulls it down.
    """
    flags = {QcFlag(flag) for flag in stack_flags}  # a name no flag has is an error, not a default
    flags.update(coverage_flags(blood_pool_ed_mm2))
    if curve_roughness(curve_ml) > JAGGED_ROUGHNESS:
        flags.add(QcFlag.JAGGED_VOLUME_CURVE)
    if flip_disagreement_ml > FLIP_DISAGREEMENT_FRACTION * max(edv_ml, 1.0):
        flags.add(QcFlag.FLIP_DISAGREEMENT)
    if not (EDV_RANGE_ML[0] <= edv_ml <= EDV_RANGE_ML[1] and ESV_RANGE_ML[0] <= esv_ml <= ESV_RANGE_ML[1]):
        flags.add(QcFlag.IMPLAUSIBLE_VOLUME)
    if not EF_RANGE_PCT[0] <= ef_pct <= EF_RANGE_PCT[1]:
        flags.add(QcFlag.IMPLAUSIBLE_EF)
    if fragment_fraction > FRAGMENT_FRACTION:
        flags.add(QcFlag.FRAGMENTED_MASK)
    penalty = sum(flag.info.weight for flag in flags)
    certainty = max(0.0, 1.0 - uncertain_fraction / UNCERTAINTY_SCALE)
    confidence = float(np.clip(np.exp(-penalty) * certainty, 0.0, 1.0))
    return QualityReport(flags=tuple(sorted(flags)), confidence=confidence)
