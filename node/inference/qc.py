"""Quality control that travels with every result: a status, the flags that explain it, a confidence.

Each check is a pure function over numbers the measurement already has. A result is ``check`` when
any of its flags says the volumes may be wrong, ``ok`` otherwise; notes (slices left out, a frame of
reference regrouped) explain what was done and do not by themselves make a result ``check``.

The confidence is a calibrated estimate of the chance that EDV and ESV are both within 15 % of an
expert's: a logistic function of how much the ED and ES volumes change when the model sees the same
frames mirrored, with their contrast changed, or with the heart smaller and larger on its grid
(test-time augmentation), and how far the model's
companion network alone (the same network from another seed; the node measures with the mean of
the two) lies from the pair (both on the ED and ES frames only), and of a few other measured terms
(:data:`CALIBRATION_TERMS`); each card weighs the terms its fit chose by how well they tell off
results apart on patients left out of the fit (2.0.0: the share of uncertain pixels alone). Its
coefficients and the level below which a result is flagged are fitted for each model on validation
data (``python -m models.evaluate --fit``) and recorded in the model card.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.domain import QcStatus
from node.inference.card import ModelCard
from node.inference.measurements import DETACHED_DISTANCE_MM, LabelMeasurement

#: Population range of LV volumes in the Kaggle Second Annual Data Science Bowl training labels
#: (500 volumes, ``dsb2/train.csv``): ESV 4.6-488.6 mL, EDV 10.5-568.6 mL.
ESV_RANGE_ML = (4.6, 488.6)
EDV_RANGE_ML = (10.5, 568.6)
#: Ejection fractions outside this range are physiologically implausible for a measured LV.
EF_RANGE_PCT = (5.0, 85.0)
#: The share of the EDV that may lie beyond an end slice before the stack counts as not covering the
#: ventricle (a third of the 15 % tolerance).
COVERAGE_MISSING_FRACTION = 0.05
#: Roughness = mean absolute second difference of the (cyclic) volume curve / stroke volume.
JAGGED_ROUGHNESS = 0.25
#: The volume error a result may have and still be ``ok``: the confidence estimates the chance that
#: EDV and ESV are both within this fraction of an expert's.
VOLUME_TOLERANCE = 0.15
#: The smallest disagreement the confidence tells apart (0.1 %: the network's own numerical noise).
DISAGREEMENT_FLOOR = 0.001
#: Fraction of an ED/ES blood-pool mask outside its largest connected component.
FRAGMENT_FRACTION = 0.05
#: Detached LV labels (:func:`~node.inference.measurements.remove_detached_lv`) flag the result from
#: this volume in one phase; smaller specks are left out without a flag.
DETACHED_FLAG_ML = 1.0


class QcFlag(StrEnum):
    """Every quality-control flag a result can carry; :meth:`info` holds what belongs to each."""

    #: Where the stack's base is known, its two ends are told apart: the apex (check) and the base (note).
    INCOMPLETE_COVERAGE_APEX = "incomplete_coverage_apex"
    INCOMPLETE_COVERAGE_BASE = "incomplete_coverage_base"
    #: Where it is not (a single slice, or an older node): the first and last slice.
    INCOMPLETE_COVERAGE_FIRST_SLICE = "incomplete_coverage_first_slice"
    INCOMPLETE_COVERAGE_LAST_SLICE = "incomplete_coverage_last_slice"
    JAGGED_VOLUME_CURVE = "jagged_volume_curve"
    #: The calibrated confidence is under the model's ``check_below`` (test-time augmentation).
    UNSTABLE_SEGMENTATION = "unstable_segmentation"
    #: Raised by nodes before QC 2 (mirroring alone); still read from their stored results.
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
        """Whether it asks for a check, plain-language text and SR code of the flag."""
        return _FLAGS[self]


@dataclass(frozen=True)
class FlagInfo:
    """What belongs to a :class:`QcFlag`.

    Attributes
    ----------
    check
        True: the volumes may be wrong, the result is ``check``. False: a note on what was done.
    text
        The explanation a radiologist reads (worklist, SR, CLI).
    code, meaning
        Code value and meaning in the node's private coding scheme (:mod:`node.reports.codes`); the
        meaning doubles as the short text on the secondary capture.
    """

    check: bool
    text: str
    code: str
    meaning: str


_FLAGS: dict[QcFlag, FlagInfo] = {
    QcFlag.INCOMPLETE_COVERAGE_APEX: FlagInfo(
        True,
        "A large LV blood pool on the apical end slice: the stack stops short of the apex, and EDV may"
        " miss more than 5 %.",
        "QC-COV-APEX",
        "Stack stops short of the apex",
    ),
    QcFlag.INCOMPLETE_COVERAGE_BASE: FlagInfo(
        False,
        "The basal end slice is ventricle in every phase: the stack may stop short of the base.",
        "QC-COV-BASE",
        "Basal slice is ventricle in every phase",
    ),
    QcFlag.INCOMPLETE_COVERAGE_FIRST_SLICE: FlagInfo(
        True,
        "A large LV blood pool on the first slice: the stack may stop short of the ventricle there,"
        " and EDV may miss more than 5 %.",
        "QC-COV-FIRST",
        "LV reaches the first slice",
    ),
    QcFlag.INCOMPLETE_COVERAGE_LAST_SLICE: FlagInfo(
        True,
        "A large LV blood pool on the last slice: the stack may stop short of the ventricle there,"
        " and EDV may miss more than 5 %.",
        "QC-COV-LAST",
        "LV reaches the last slice",
    ),
    QcFlag.JAGGED_VOLUME_CURVE: FlagInfo(
        True,
        "The LV volume curve over the cardiac cycle is jagged: segmentation varies between phases.",
        "QC-JAGGED",
        "Jagged LV volume curve",
    ),
    QcFlag.UNSTABLE_SEGMENTATION: FlagInfo(
        True,
        "The calibrated confidence is low: the model is unsure of this study (many pixels it cannot"
        " place with confidence, its companion network disagreeing, or a segmentation that changes when"
        " the images are mirrored or shown with another contrast, as the model's card weighs them), and"
        " the volumes may be off by more than 15 %.",
        "QC-UNSTABLE",
        "Low calibrated confidence in the segmentation",
    ),
    QcFlag.FLIP_DISAGREEMENT: FlagInfo(
        True,
        "Segmentation changes when the image is mirrored: the model is unsure of this study.",
        "QC-FLIP",
        "Segmentation unstable under mirroring",
    ),
    QcFlag.IMPLAUSIBLE_VOLUME: FlagInfo(
        True,
        "EDV or ESV is outside the range seen in a general population.",
        "QC-VOLUME",
        "LV volume outside population range",
    ),
    QcFlag.IMPLAUSIBLE_EF: FlagInfo(
        True,
        "The ejection fraction is outside the physiological range.",
        "QC-EF",
        "EF outside physiological range",
    ),
    QcFlag.FRAGMENTED_MASK: FlagInfo(
        True,
        "The LV blood-pool mask is split into pieces on the ED or ES frames.",
        "QC-FRAGMENT",
        "Fragmented LV blood-pool mask",
    ),
    QcFlag.MISSING_SLICES: FlagInfo(
        True,
        "Slices are missing from the stack (a gap in slice positions).",
        "QC-MISS-SLICE",
        "Slices missing from the stack",
    ),
    QcFlag.MISSING_PHASES: FlagInfo(
        False,
        "Some slices lack some cardiac phases; their areas were interpolated.",
        "QC-MISS-PHASE",
        "Phases missing on some slices",
    ),
    QcFlag.IRREGULAR_SLICE_SPACING: FlagInfo(
        False, "Slice spacing is irregular.", "QC-SPACING", "Irregular slice spacing"
    ),
    QcFlag.INCONSISTENT_GEOMETRY: FlagInfo(
        False,
        "Some images had a different matrix or pixel spacing and were left out.",
        "QC-GEOMETRY",
        "Images of other geometry left out",
    ),
    QcFlag.DUPLICATE_POSITIONS_REPLACED: FlagInfo(
        False,
        "Some slice positions were acquired twice; the later acquisition was used.",
        "QC-DUPLICATE",
        "Repeated slice positions replaced",
    ),
    QcFlag.INCONSISTENT_FRAME_OF_REFERENCE: FlagInfo(
        False,
        "Images of the stack carry different Frame of Reference UIDs; slices were grouped by geometry.",
        "QC-FOR",
        "Inconsistent Frame of Reference UIDs",
    ),
    QcFlag.BASAL_SLICES_EXCLUDED: FlagInfo(
        False,
        "Basal frames that are atrium or outflow tract (blood pool less than half surrounded by"
        " myocardium) are left out of the volumes and masses: in the phases where they are (SCMR 2020,"
        " the default), or, by the every-phase rule, whole basal slices that are not ventricle in every"
        " phase.",
        "QC-BASAL",
        "Basal slices left out of the volumes",
    ),
    QcFlag.DETACHED_LV_REMOVED: FlagInfo(
        False,
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
class QcFeatures:
    """What the confidence is estimated from, each measured on the ED and ES frames only.

    Attributes
    ----------
    disagreement
        The largest relative change of the ED or ES blood-pool volume under test-time augmentation
        (the frames mirrored, and with their contrast changed); None where it was not run (a card
        whose calibration does not weigh it, see :class:`~node.pipeline.measure.StackMeasurer`).
    uncertain
        Pixels whose most likely class has under 0.6 probability, per blood-pool pixel.
    basal_share
        The largest share of the ED or ES volume that lies in the basal end slice, where the
        ventricle's edge (valve plane, outflow tract) is hardest to place.
    esv_ml
        The end-systolic volume: the smaller the volume, the larger a given error relative to it.
    edv_ml
        The end-diastolic volume: with ``esv_ml``, the ejection fraction. The higher it is, the
        smaller ESV is against the ventricle's border, and the larger a border error relative to ESV.
    companion_disagreement
        The largest relative difference of the ED or ES blood-pool volume between the companion
        network alone and the pair it forms with the model (:class:`~node.inference.card.CompanionSpec`);
        0 for a model without one.
    scale_sensitivity
        How much the ED or ES blood-pool volume changes when the model sees the same frames with the
        heart smaller and larger on its grid (:data:`~node.pipeline.measure.TTA_SCALES`), relative to
        the measured volume; the larger of the two phases. A border the model places where the image
        shows it moves little with the heart's apparent size; one it guesses moves with it. None
        where it was not run (a card whose calibration does not weigh it). Weighed as it is, not as a
        logarithm like the other relative changes: it was offered to the fit in this form, and
        ``python -m models.heldout`` judged it in this form (ranks, which a logarithm keeps).
    """

    disagreement: float | None
    uncertain: float
    basal_share: float
    esv_ml: float
    edv_ml: float
    companion_disagreement: float = 0.0
    scale_sensitivity: float | None = None

    def terms(self) -> dict[str, float]:
        """The named terms :class:`Calibration` weighs (logarithms where the effect is relative), in
        the order of :data:`CALIBRATION_TERMS`; a feature that was not measured gives no term."""
        augmented = self.disagreement
        terms = {
            "log_disagreement": (
                math.log(max(augmented, DISAGREEMENT_FLOOR)) if augmented is not None else None
            ),
            "log_uncertain": math.log(max(self.uncertain, DISAGREEMENT_FLOOR)),
            "basal_share": self.basal_share,
            "log_esv": math.log(max(self.esv_ml, 1.0)),
            "ejection_fraction": 1.0 - self.esv_ml / self.edv_ml if self.edv_ml > 0 else 0.0,
            "log_companion_disagreement": math.log(max(self.companion_disagreement, DISAGREEMENT_FLOOR)),
            "scale_sensitivity": self.scale_sensitivity,
        }
        return {name: value for name, value in terms.items() if value is not None}

    def measured(self) -> dict[str, float]:
        """The features that were measured, by name (what a result stores)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


#: The names of :meth:`QcFeatures.terms`: what a card's calibration may weigh.
CALIBRATION_TERMS: tuple[str, ...] = (
    "log_disagreement",
    "log_uncertain",
    "basal_share",
    "log_esv",
    "ejection_fraction",
    "log_companion_disagreement",
    "scale_sensitivity",
)


@dataclass(frozen=True)
class Calibration:
    """How a model's :class:`QcFeatures` become a confidence (from its card).

    ``confidence = 1 / (1 + exp(-(intercept + sum of coefficient x term))))`` over
    :meth:`QcFeatures.terms` (a term without a coefficient weighs 0); a result whose confidence is
    under ``check_below`` is flagged :attr:`QcFlag.UNSTABLE_SEGMENTATION`.
    """

    intercept: float
    coefficients: Mapping[str, float]
    check_below: float

    def confidence(self, features: QcFeatures) -> float:
        """The estimated chance that EDV and ESV are both within :data:`VOLUME_TOLERANCE`."""
        terms = features.terms()
        unmeasured = sorted(set(self.coefficients) - terms.keys())
        if unmeasured:
            raise ValueError(f"the calibration weighs terms that were not measured: {', '.join(unmeasured)}")
        logit = self.intercept + sum(weight * terms[name] for name, weight in self.coefficients.items())
        if not math.isfinite(logit):
            return 0.0
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))


#: For a card without a calibration of its own (released before QC 2, as 1.0.0 was).
DEFAULT_CALIBRATION = Calibration(intercept=-2.0, coefficients={"log_disagreement": -1.0}, check_below=0.5)


def calibration_of(card: ModelCard) -> Calibration:
    """The card's calibration, else :data:`DEFAULT_CALIBRATION`."""
    spec = card.qc_calibration
    if spec is None:
        return DEFAULT_CALIBRATION
    unknown = set(spec.coefficients) - set(CALIBRATION_TERMS)
    if unknown:
        raise ValueError(f"the card's QC calibration weighs terms this node does not know: {sorted(unknown)}")
    return Calibration(spec.intercept, dict(spec.coefficients), spec.check_below)


@dataclass(frozen=True)
class QualityReport:
    """Status, the flags (sorted) that explain it, and the calibrated confidence in [0, 1]."""

    status: QcStatus
    flags: tuple[QcFlag, ...]
    confidence: float


#: What each status tells the reader, in the SR, the picture, the worklist and the command line.
QC_STATEMENTS: dict[QcStatus, str] = {
    QcStatus.CHECK: "Quality control: check this result; the flags below say why the volumes may be wrong.",
    QcStatus.OK: "Quality control: ok; nothing found that makes the volumes doubtful (still to be verified).",
}


def qc_statement(status: QcStatus) -> str:
    """The plain-language sentence for a QC status."""
    return QC_STATEMENTS[status]


def qc_status(flags: Iterable[str]) -> QcStatus:
    """``check`` when any flag asks for a check (a name this node does not know does too)."""
    for flag in flags:
        known = QcFlag._value2member_map_.get(flag)
        if not isinstance(known, QcFlag) or known.info.check:
            return QcStatus.CHECK
    return QcStatus.OK


def coverage_flags(
    blood_pool_ed_ml: npt.NDArray[np.floating], base_slice: int | None = None, base_closed: bool = False
) -> list[QcFlag]:
    """Flags when the ventricle may go on beyond an end slice of the stack by enough to matter.

    What lies beyond an end slice is estimated as half that slice's ED blood-pool volume (the LV
    tapers past it); an end is flagged when that is over :data:`COVERAGE_MISSING_FRACTION` of the EDV.
    With the base known (``base_slice``), the apical end asks for a check; the basal end is a note,
    and only when it never closes (``base_closed`` False: its blood pool is left out or absent in no
    phase): a large basal slice is what a well-planned stack starts with, and on the validation data
    the basal-end flag marked good results as often as bad ones. Without it, the first and last slice
    ask for a check.
    """
    volumes = np.asarray(blood_pool_ed_ml, dtype=np.float64)
    total = float(volumes.sum()) if volumes.size else 0.0
    if total <= 0:
        return []
    last = volumes.size - 1
    ends: tuple[tuple[int, QcFlag], ...]
    if base_slice is None:
        ends = ((0, QcFlag.INCOMPLETE_COVERAGE_FIRST_SLICE), (last, QcFlag.INCOMPLETE_COVERAGE_LAST_SLICE))
    else:
        apex = last if base_slice == 0 else 0
        ends = ((apex, QcFlag.INCOMPLETE_COVERAGE_APEX),) + (
            () if base_closed else ((base_slice, QcFlag.INCOMPLETE_COVERAGE_BASE),)
        )
    return [flag for index, flag in ends if 0.5 * volumes[index] > COVERAGE_MISSING_FRACTION * total]


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
    blood_pool_ed_ml: npt.NDArray[np.floating],
    base_slice: int | None,
    base_closed: bool,
    features: QcFeatures,
    fragment_fraction: float,
    stack_flags: Iterable[str],
    calibration: Calibration,
) -> QualityReport:
    """Combine every check into a status, flags and a confidence.

    ``blood_pool_ed_ml`` is the ED blood-pool volume per slice; ``base_slice`` is the index of the
    basal end slice (None: unknown) and ``base_closed`` whether its blood pool is left out or absent
    in some phase (:func:`coverage_flags`). The confidence is the calibrated estimate from
    ``features`` (:class:`Calibration`); under the model's ``check_below`` it is a flag of its own.
    """
    flags = {QcFlag(flag) for flag in stack_flags}  # a name no flag has is an error, not a default
    flags.update(coverage_flags(blood_pool_ed_ml, base_slice, base_closed))
    if curve_roughness(curve_ml) > JAGGED_ROUGHNESS:
        flags.add(QcFlag.JAGGED_VOLUME_CURVE)
    confidence = calibration.confidence(features)
    if confidence < calibration.check_below:
        flags.add(QcFlag.UNSTABLE_SEGMENTATION)
    if not (EDV_RANGE_ML[0] <= edv_ml <= EDV_RANGE_ML[1] and ESV_RANGE_ML[0] <= esv_ml <= ESV_RANGE_ML[1]):
        flags.add(QcFlag.IMPLAUSIBLE_VOLUME)
    if not EF_RANGE_PCT[0] <= ef_pct <= EF_RANGE_PCT[1]:
        flags.add(QcFlag.IMPLAUSIBLE_EF)
    if fragment_fraction > FRAGMENT_FRACTION:
        flags.add(QcFlag.FRAGMENTED_MASK)
    ordered = tuple(sorted(flags))
    return QualityReport(status=qc_status(ordered), flags=ordered, confidence=confidence)
