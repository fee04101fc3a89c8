"""Evaluate a released model and the node's QC: ``python -m models.evaluate [--version V] [--fit]``.

The model runs through the node's own measurement (:meth:`node.pipeline.measure.StackMeasurer.assess`:
segmentation, detached-label removal, the basal rule, volumes, test-time augmentation, QC) on two
datasets, each as stored and under four synthetic vendor shifts applied to the stored intensities
before the node's normalisation:

- ACDC validation patients (20, four per pathology group, never trained on; Bernard et al. 2018):
  ED and ES frames as a two-phase stack at their real spacing (``acdc-info.csv``), against the
  experts' labels, with the per-phase basal rule (the node's default; these experts contour per phase);
- Sunnybrook (3 whole cine series; Radau et al. 2009, CC0; never trained on), against the expert's
  contours (sum over contoured slices), with the every-phase basal rule: this expert contoured the
  same slices at ED and ES, leaving out the extreme base (:data:`EXPERT_RULES`).

It prints, per dataset and shift: EDV / ESV / EF mean absolute error and bias, LV blood-pool Dice, and
the QC figures the issue sets targets for (the share of results off by more than 15 % in EDV or ESV
that are ``check``: target all; the share of the others that are ``check``: at most 25 %; the AUC of
the confidence for "off by more than 15 %": at least 0.85); then each basal rule (per phase, every
phase, none) on each dataset (EDV / ESV bias), a reliability table of the confidence,
and the flags raised on good and on bad results. ``--fit`` fits the calibration on these cases
(choosing its terms by how they do on patients left out, :func:`fit_calibration`), prints the
``qc_calibration`` section of the model card and how that calibration does on patients held out.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.data import SUNNYBROOK_IDS, data_root, load_acdc, load_sunnybrook, polygon_area, split_patients
from models.predict import dice
from models.spec import MODEL_NAME
from node.domain import BasalRule, QcStatus
from node.inference.measurements import (
    LabelGeometry,
    basal_cells_every_phase,
    basal_cells_per_phase,
    base_is_last,
    remove_detached_lv,
)
from node.inference.preprocess import normalise
from node.inference.qc import CALIBRATION_TERMS, VOLUME_TOLERANCE, Calibration, QcFeatures, QcFlag, qc_status
from node.inference.registry import DEFAULT_MODEL_DIR, find_model
from node.inference.runner import Segmenter
from node.pipeline.measure import NoLeftVentricle, StackMeasurer

Frames = npt.NDArray[np.float32]


def _seed(*parts: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(parts).encode()))


def _p99(frames: Frames) -> float:
    return max(float(np.percentile(frames, 99.0)), 1e-6)


def _contrast(frames: Frames, rng: np.random.Generator) -> Frames:
    """Another sequence's contrast: gamma 0.5 on the intensities relative to their 99th percentile."""
    top = _p99(frames)
    return (top * np.power(np.clip(frames / top, 0.0, None), 0.5)).astype(np.float32)


def _noise(frames: Frames, rng: np.random.Generator) -> Frames:
    """A noisier coil or field strength: Rician noise, sigma 6 % of the 99th percentile."""
    sigma = 0.06 * _p99(frames)
    real = frames + rng.normal(0.0, sigma, frames.shape)
    imaginary = rng.normal(0.0, sigma, frames.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _resolution(frames: Frames, rng: np.random.Generator) -> Frames:
    """A coarser acquisition: pixels twice as large in plane (block mean), interpolated back."""
    rows, cols = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    coarse = frames[:, :rows, :cols].reshape(frames.shape[0], rows // 2, 2, cols // 2, 2).mean(axis=(2, 4))
    fine = ndimage.zoom(coarse, (1, 2, 2), order=1)
    out = frames.copy()
    out[:, :rows, :cols] = fine
    return out


def _bias(frames: Frames, rng: np.random.Generator) -> Frames:
    """A coil's intensity bias: a smooth multiplicative ramp across the field, x0.64 to x1.57."""
    rows, cols = frames.shape[1:]
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(angle) * np.linspace(-1, 1, rows)[:, None] + np.sin(angle) * np.linspace(-1, 1, cols)[None]
    return (frames * np.exp(0.45 * ramp / max(np.abs(ramp).max(), 1e-6))).astype(np.float32)


SHIFTS: dict[str, Callable[[Frames, np.random.Generator], Frames] | None] = {
    "none": None,
    "contrast": _contrast,
    "noise": _noise,
    "resolution": _resolution,
    "bias": _bias,
}


#: The basal rule each dataset's experts contoured by (:class:`~node.domain.BasalRule`): the ACDC
#: experts per phase; the Sunnybrook expert the same slices at ED and ES (data README: "not the extreme
#: base"), so the per-phase rule would add the ED-only basal slice that expert left out.
EXPERT_RULES = {"ACDC": BasalRule.PER_PHASE, "Sunnybrook": BasalRule.EVERY_PHASE}


@dataclass(frozen=True)
class Case:
    """One result against its reference."""

    dataset: str
    shift: str
    case: str
    ref_edv_ml: float
    ref_esv_ml: float
    edv_ml: float
    esv_ml: float
    dice_ed: float
    dice_es: float
    status: str
    flags: tuple[str, ...]
    confidence: float
    features: QcFeatures

    @property
    def ref_ef_pct(self) -> float:
        return 100.0 * (self.ref_edv_ml - self.ref_esv_ml) / self.ref_edv_ml

    @property
    def ef_pct(self) -> float:
        return 100.0 * (self.edv_ml - self.esv_ml) / self.edv_ml if self.edv_ml > 0 else 0.0

    @property
    def off(self) -> bool:
        """EDV or ESV off by more than the tolerance (15 %)."""
        return (
            abs(self.edv_ml - self.ref_edv_ml) > VOLUME_TOLERANCE * self.ref_edv_ml
            or abs(self.esv_ml - self.ref_esv_ml) > VOLUME_TOLERANCE * self.ref_esv_ml
        )


def _failed(dataset: str, shift: str, case: str, ref_edv: float, ref_esv: float) -> Case:
    """No LV found: a result nobody may trust (counted as off and ``check``)."""
    nothing = QcFeatures(
        math.inf, math.inf, 1.0, 0.0, 0.0, companion_disagreement=math.inf, scale_sensitivity=math.inf
    )
    return Case(dataset, shift, case, ref_edv, ref_esv, 0.0, 0.0, 0.0, 0.0, "check", ("no_lv",), 0.0, nothing)


def acdc_case(measurer: StackMeasurer, root: Path, patient: str, shift: str) -> tuple[Case, BasalVolumes]:
    """One ACDC validation patient's ED and ES frames as a two-phase stack."""
    case = load_acdc(root, patient, None)
    slices, rows, cols = case.ed_image.shape
    raw = np.stack([case.ed_image, case.es_image], axis=1).reshape(-1, rows, cols)
    transform = SHIFTS[shift]
    if transform is not None:
        raw = transform(raw, _seed(patient, shift))
    values = normalise(raw, measurer.segmenter.card.input.normalisation)
    present = np.ones((slices, 2), dtype=bool)
    geometry = LabelGeometry(case.pixel_spacing, case.slice_mm)
    ref_edv = float((case.ed_label == 3).sum()) * case.voxel_ml
    ref_esv = float((case.es_label == 3).sum()) * case.voxel_ml
    basal = basal_volumes(measurer, values, present, geometry)
    try:
        assessed = measurer.assess(values, present, geometry, basal_rule=EXPERT_RULES["ACDC"])
    except NoLeftVentricle:
        return _failed("ACDC", shift, patient, ref_edv, ref_esv), basal
    blood = measurer.segmenter.card.class_index("lv_blood_pool")
    labels = assessed.labels
    measured = assessed.measured.measurements
    result = Case(
        dataset="ACDC",
        shift=shift,
        case=patient,
        ref_edv_ml=ref_edv,
        ref_esv_ml=ref_esv,
        edv_ml=measured.edv_ml,
        esv_ml=measured.esv_ml,
        dice_ed=dice(labels[:, 0] == blood, case.ed_label == 3),
        dice_es=dice(labels[:, 1] == blood, case.es_label == 3),
        status=str(assessed.quality.status),
        flags=tuple(str(flag) for flag in assessed.quality.flags),
        confidence=assessed.quality.confidence,
        features=assessed.features,
    )
    return result, basal


def sunnybrook_case(
    measurer: StackMeasurer, root: Path, patient: str, shift: str
) -> tuple[Case, BasalVolumes]:
    """One Sunnybrook cine series, whole, as the node measures it, against the expert's contours."""
    case = load_sunnybrook(root, patient)
    slices, phases, rows, cols = case.frames.shape
    raw = case.frames.reshape(-1, rows, cols)
    transform = SHIFTS[shift]
    if transform is not None:
        raw = transform(raw, _seed(patient, shift))
    values = normalise(raw, measurer.segmenter.card.input.normalisation)
    present = np.ones((slices, phases), dtype=bool)
    geometry = LabelGeometry(case.pixel_spacing, case.slice_spacing_mm, base_is_last(case.normal))
    by_slice: dict[int, list[int]] = {}
    for slice_index, phase in case.contours:
        by_slice.setdefault(slice_index, []).append(phase)
    millilitres = case.pixel_spacing[0] * case.pixel_spacing[1] * case.spacing_between_slices_mm / 1000.0
    ref = {"ED": 0.0, "ES": 0.0}
    chosen: dict[str, list[tuple[int, int]]] = {"ED": [], "ES": []}
    for slice_index, contoured in by_slice.items():
        ordered = sorted(contoured, key=lambda p: polygon_area(case.contours[(slice_index, p)]))
        for which, phase in (("ES", ordered[0]), ("ED", ordered[-1])):
            ref[which] += polygon_area(case.contours[(slice_index, phase)]) * millilitres
            chosen[which].append((slice_index, phase))
    basal = basal_volumes(measurer, values, present, geometry)
    try:
        assessed = measurer.assess(values, present, geometry, basal_rule=EXPERT_RULES["Sunnybrook"])
    except NoLeftVentricle:
        return _failed("Sunnybrook", shift, patient, ref["ED"], ref["ES"]), basal
    blood = measurer.segmenter.card.class_index("lv_blood_pool")

    def mean_dice(which: str) -> float:
        return float(
            np.mean([dice(assessed.labels[s, p] == blood, case.contour_mask(s, p)) for s, p in chosen[which]])
        )

    measured = assessed.measured.measurements
    result = Case(
        dataset="Sunnybrook",
        shift=shift,
        case=patient,
        ref_edv_ml=ref["ED"],
        ref_esv_ml=ref["ES"],
        edv_ml=measured.edv_ml,
        esv_ml=measured.esv_ml,
        dice_ed=mean_dice("ED"),
        dice_es=mean_dice("ES"),
        status=str(assessed.quality.status),
        flags=tuple(str(flag) for flag in assessed.quality.flags),
        confidence=assessed.quality.confidence,
        features=assessed.features,
    )
    return result, basal


@dataclass(frozen=True)
class BasalVolumes:
    """EDV and ESV (mL) of one stack under three basal rules: per phase (SCMR 2020, the node's default),
    every phase (a basal slice counts only when ventricle throughout), and none."""

    per_phase: tuple[float, float]
    every_phase: tuple[float, float]
    none: tuple[float, float]


def basal_volumes(
    measurer: StackMeasurer,
    values: Frames,
    present: npt.NDArray[np.bool_],
    geometry: LabelGeometry,
) -> BasalVolumes:
    """Segment once and measure the blood pool under each basal rule (detached labels removed)."""
    card = measurer.segmenter.card
    blood, myo = card.class_index("lv_blood_pool"), card.class_index("lv_myocardium")
    labels = np.zeros((*present.shape, *values.shape[1:]), dtype=np.uint8)
    labels[present] = measurer.segmenter.segment(values, geometry.pixel_spacing, normalised=True).labels
    remove_detached_lv(labels, blood, myo, card.class_index("background"), geometry.pixel_spacing)
    areas = (labels == blood).sum(axis=(2, 3)).astype(np.float64)
    per_phase = basal_cells_per_phase(labels, blood, myo, present, geometry.base_last)
    every_phase = basal_cells_every_phase(labels, blood, myo, present, geometry.base_last)
    pixel_ml = geometry.slice_ml(present.shape[0])[:, None]

    def ed_es(excluded: npt.NDArray[np.bool_]) -> tuple[float, float]:
        curve = (np.where(excluded, 0.0, areas) * pixel_ml).sum(axis=0)
        return float(curve.max()), float(curve.min())

    return BasalVolumes(ed_es(per_phase), ed_es(every_phase), ed_es(np.zeros_like(per_phase)))


def auc(scores: list[float], positives: list[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (ties count half); NaN without both."""
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


def _design(cases: list[Case], names: Sequence[str]) -> npt.NDArray[np.float64]:
    rows = [[1.0, *(case.features.terms()[name] for name in names)] for case in cases]
    return np.array(rows, dtype=np.float64)


def _logistic(
    design: npt.NDArray[np.float64], y: npt.NDArray[np.float64], ridge: float
) -> npt.NDArray[np.float64]:
    """Logistic regression by Newton's method with a ridge on the coefficients (not the intercept)."""
    beta = np.zeros(design.shape[1])
    penalty = ridge * np.eye(design.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -60, 60)))
        gradient = design.T @ (y - p) - penalty @ beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return beta


FIT_RIDGE = 1.0
#: The direction each term may move the confidence: a disagreement (under test-time augmentation of
#: mirror, contrast or scale, or with the companion), uncertain pixels or a large basal share may only
#: lower it, a larger ESV only raise it (the same border error is a smaller share of
#: it); the ejection fraction either way. A term fitted against its direction is left out and the
#: rest fitted again: with a handful of failures in the validation data such a weight is chance, and
#: it would let a less stable segmentation raise the confidence.
TERM_DIRECTIONS = {
    "log_disagreement": -1,
    "log_uncertain": -1,
    "basal_share": -1,
    "log_esv": 1,
    "log_companion_disagreement": -1,
    "scale_sensitivity": -1,
}


def _columns(names: list[str]) -> list[int]:
    """The columns of a design matrix built over :data:`CALIBRATION_TERMS` (after the column of ones)
    that hold ``names``, the column of ones first."""
    return [0, *(1 + CALIBRATION_TERMS.index(name) for name in names)]


def _fit_terms(
    design: npt.NDArray[np.float64], y: npt.NDArray[np.float64], names: Sequence[str]
) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Of ``names``, the terms kept (each in its direction, :data:`TERM_DIRECTIONS`) and their fitted
    weights; ``design`` holds a column of ones and one per :data:`CALIBRATION_TERMS`."""
    kept = list(names)
    while True:
        beta = _logistic(design[:, _columns(kept)], y, FIT_RIDGE)
        against = {
            name: abs(weight)
            for name, weight in zip(kept, beta[1:], strict=True)
            if TERM_DIRECTIONS.get(name, 0) * weight < 0
        }
        if not against:
            return kept, beta
        kept.remove(max(against, key=against.__getitem__))  # the strongest contradiction first


#: A term joins the calibration only if it raises the held-out AUC by at least this much: with a
#: handful of failing patients, a smaller gain is chance, and each term is one more weight to overfit.
MIN_AUC_GAIN = 0.01


@dataclass(frozen=True)
class HeldOut:
    """How the calibration does on patients it was not fitted on (the validation data holds a handful of
    failing patients, each under several shifts, so a case left out alone is not held out: the same
    patient under another shift stays in the fit).

    Attributes
    ----------
    patients
        Patients (a dataset's case, under every shift) in the fit.
    auc
        Leave-patient-pair-out AUC (Airola et al., Comput. Stat. Data Anal. 2011, by patient): each
        pair of an off and a good result is ranked by a fit of the chosen terms without either's
        patient. The terms were chosen on all patients, so this is slightly optimistic.
        With a single term, no fit can change its ranking: its AUC is the same held out or not.
    off_checked, good_checked
        Leave-one-patient-out: each patient's results judged by a fit, and a ``check_below``, found
        without that patient; the share of off results that are ``check``, and of the others (of the
        results the fit can use: a result without a ventricle has no terms and is always ``check``).
    """

    patients: int
    auc: float
    off_checked: float
    good_checked: float


def _patients(cases: Sequence[Case]) -> list[tuple[str, str]]:
    """Each result's patient: its dataset and case, the same under every shift."""
    return [(case.dataset, case.case) for case in cases]


def _pair_out_auc(
    design: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    patients: list[tuple[str, str]],
    names: Sequence[str],
) -> float:
    """Leave-patient-pair-out AUC of a fit of ``names`` (:class:`HeldOut`); NaN without off and good."""
    fits: dict[frozenset[tuple[str, str]], tuple[list[str], npt.NDArray[np.float64]]] = {}
    wins, pairs = 0.0, 0
    for off in np.flatnonzero(y == 0.0):
        for good in np.flatnonzero(y == 1.0):
            left_out = frozenset((patients[off], patients[good]))
            if left_out not in fits:
                keep = np.array([patient not in left_out for patient in patients])
                fits[left_out] = _fit_terms(design[keep], y[keep], names)
            kept, beta = fits[left_out]
            off_score, good_score = design[[off, good]][:, _columns(kept)] @ beta
            wins += 1.0 if good_score > off_score else 0.5 if good_score == off_score else 0.0
            pairs += 1
    return wins / pairs if pairs else math.nan


def _choose_terms(
    design: npt.NDArray[np.float64], y: npt.NDArray[np.float64], patients: list[tuple[str, str]]
) -> list[str]:
    """Forward selection by held-out AUC: start with no term, add the term that raises the
    leave-patient-pair-out AUC most, while it rises by :data:`MIN_AUC_GAIN` or more."""
    chosen: list[str] = []
    best = 0.5
    while len(chosen) < len(CALIBRATION_TERMS):
        trials = {
            name: _pair_out_auc(design, y, patients, [*chosen, name])
            for name in CALIBRATION_TERMS
            if name not in chosen
        }
        name, value = max(trials.items(), key=lambda item: item[1])
        if value < best + MIN_AUC_GAIN:
            break
        chosen.append(name)
        best = value
    return chosen


def _check_level(scores: Sequence[float], cases: Sequence[Case]) -> float:
    """The highest score of an off result the other flags leave ``ok`` (at or below it, a result is
    ``check``); -inf where there is none."""
    missed = [
        score
        for score, case in zip(scores, cases, strict=True)
        if case.off and qc_status(_other_flags(case)) == QcStatus.OK
    ]
    return max(missed) if missed else -math.inf


def _held_out(
    usable: list[Case], design: npt.NDArray[np.float64], y: npt.NDArray[np.float64], names: list[str]
) -> HeldOut:
    """How a calibration over ``names`` does on patients left out of its fit (:class:`HeldOut`)."""
    patients = _patients(usable)
    off_checked: list[bool] = []
    good_checked: list[bool] = []
    for patient in sorted(set(patients)):
        fit = np.array([other != patient for other in patients])
        kept, beta = _fit_terms(design[fit], y[fit], names)
        scores = design[:, _columns(kept)] @ beta
        level = _check_level(scores[fit].tolist(), [c for c, f in zip(usable, fit, strict=True) if f])
        for index in np.flatnonzero(~fit):
            case = usable[index]
            checked = bool(scores[index] <= level) or qc_status(_other_flags(case)) != QcStatus.OK
            (off_checked if case.off else good_checked).append(checked)
    return HeldOut(
        patients=len(set(patients)),
        auc=_pair_out_auc(design, y, patients, names),
        off_checked=float(np.mean(off_checked)) if off_checked else math.nan,
        good_checked=float(np.mean(good_checked)) if good_checked else math.nan,
    )


def _fit_data(cases: list[Case]) -> tuple[list[Case], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The results a fit can use (a result without a ventricle has no terms), their design matrix over
    :data:`CALIBRATION_TERMS` and whether each is within 15 % (1) or off (0).

    Raises
    ------
    ValueError
        Off results from fewer than 2 patients, or none within 15 %: nothing can be judged on held-out
        patients.
    """
    usable = [c for c in cases if all(math.isfinite(v) for v in c.features.terms().values())]
    failing = {(c.dataset, c.case) for c in usable if c.off}
    if len(failing) < 2 or all(c.off for c in usable):
        raise ValueError(
            f"results off by more than 15 % from {len(failing)} patient(s), and "
            f"{sum(not c.off for c in usable)} within it: choosing terms on held-out patients needs off "
            "results from at least 2 patients, and results within 15 %"
        )
    design = _design(usable, CALIBRATION_TERMS)
    return usable, design, np.array([0.0 if c.off else 1.0 for c in usable])


def held_out_figures(cases: list[Case], names: list[str]) -> HeldOut:
    """How a calibration over the terms ``names`` does on patients left out of its fit."""
    usable, design, y = _fit_data(cases)
    return _held_out(usable, design, y, names)


def chosen_terms(cases: list[Case]) -> list[str]:
    """The terms the forward selection of :func:`fit_calibration` picks on ``cases``."""
    usable, design, y = _fit_data(cases)
    return _choose_terms(design, y, _patients(usable))


def fit_calibration(cases: list[Case]) -> tuple[Calibration, HeldOut]:
    """Logistic regression of "within 15 %" on the :data:`CALIBRATION_TERMS` that the held-out AUC
    chooses (:func:`_choose_terms`; a term fitted against its direction is left out,
    :data:`TERM_DIRECTIONS`), and ``check_below`` the lowest level that marks every off result the
    other flags leave ``ok``; with how that calibration does on patients it was not fitted on.

    Raises
    ------
    ValueError
        Off results from fewer than 2 patients, or none within 15 %: nothing can be judged on held-out
        patients. Or no term tells off results apart there: the card would mark every result ``check``.
    """
    usable, design, y = _fit_data(cases)
    chosen = _choose_terms(design, y, _patients(usable))
    if not chosen:
        raise ValueError(
            "no term tells off results apart on held-out patients: the confidence would be one value, "
            "and every result check"
        )
    names, beta = _fit_terms(design, y, chosen)
    coefficients = {name: round(float(b), 4) for name, b in zip(names, beta[1:], strict=True)}
    calibration = Calibration(round(float(beta[0]), 4), coefficients, check_below=0.0)
    level = _check_level([calibration.confidence(c.features) for c in usable], usable)
    check_below = min(1.0, level + 1e-3) if math.isfinite(level) else 0.0
    return Calibration(calibration.intercept, coefficients, round(check_below, 3)), _held_out(
        usable, design, y, names
    )


def _other_flags(case: Case) -> tuple[str, ...]:
    return tuple(flag for flag in case.flags if flag != QcFlag.UNSTABLE_SEGMENTATION)


def recalibrated(cases: list[Case], calibration: Calibration) -> list[Case]:
    """The cases as the node would report them with ``calibration``: confidence, flags and status."""
    out = []
    for case in cases:
        if not all(math.isfinite(v) for v in case.features.terms().values()):
            out.append(case)
            continue
        confidence = calibration.confidence(case.features)
        unstable = (QcFlag.UNSTABLE_SEGMENTATION,) if confidence < calibration.check_below else ()
        flags = tuple(sorted(_other_flags(case) + unstable))
        out.append(replace(case, confidence=confidence, flags=flags, status=str(qc_status(flags))))
    return out


def _summary(cases: list[Case]) -> dict[str, float]:
    def errors(model: str, ref: str) -> npt.NDArray[np.float64]:
        return np.array([getattr(c, model) - getattr(c, ref) for c in cases])

    edv, esv, ef = (
        errors("edv_ml", "ref_edv_ml"),
        errors("esv_ml", "ref_esv_ml"),
        errors("ef_pct", "ref_ef_pct"),
    )
    off = [c for c in cases if c.off]
    good = [c for c in cases if not c.off]
    return {
        "n": len(cases),
        "edv_mae_ml": float(np.abs(edv).mean()),
        "edv_bias_ml": float(edv.mean()),
        "esv_mae_ml": float(np.abs(esv).mean()),
        "esv_bias_ml": float(esv.mean()),
        "ef_mae_pct": float(np.abs(ef).mean()),
        "ef_bias_pct": float(ef.mean()),
        "dice_ed": float(np.mean([c.dice_ed for c in cases])),
        "dice_es": float(np.mean([c.dice_es for c in cases])),
        "off": len(off),
        "off_checked": float(np.mean([c.status == "check" for c in off])) if off else math.nan,
        "good_checked": float(np.mean([c.status == "check" for c in good])) if good else math.nan,
        "auc": auc([-c.confidence for c in cases], [c.off for c in cases]),
    }


def _print_summaries(rows: dict[str, dict[str, float]]) -> None:
    print(
        f"{'dataset / shift':26s} {'n':>3s} {'EDV MAE':>7s} {'bias':>6s} {'ESV MAE':>7s} {'bias':>6s} "
        f"{'EF MAE':>6s} {'bias':>5s} {'Dice ED':>7s} {'ES':>5s} | {'off':>3s} {'off chk':>7s} "
        f"{'ok chk':>6s} {'AUC':>5s}"
    )
    for name, r in rows.items():
        print(
            f"{name:26s} {r['n']:3.0f} {r['edv_mae_ml']:7.1f} {r['edv_bias_ml']:6.1f} {r['esv_mae_ml']:7.1f} "
            f"{r['esv_bias_ml']:6.1f} {r['ef_mae_pct']:6.1f} {r['ef_bias_pct']:5.1f} {r['dice_ed']:7.3f} "
            f"{r['dice_es']:5.3f} | {r['off']:3.0f} {r['off_checked']:7.0%} {r['good_checked']:6.0%} "
            f"{r['auc']:5.2f}"
        )


def reliability(cases: list[Case], bins: int = 5) -> list[dict[str, float]]:
    """Per confidence bin: results, mean confidence, and the share actually within 15 %."""
    table = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = [
            c for c in cases if low <= c.confidence < high or (index == bins - 1 and c.confidence == 1.0)
        ]
        table.append(
            {
                "low": low,
                "high": high,
                "n": len(inside),
                "mean_confidence": float(np.mean([c.confidence for c in inside])) if inside else math.nan,
                "within_15pct": float(np.mean([not c.off for c in inside])) if inside else math.nan,
            }
        )
    return table


def evaluate(
    measurer: StackMeasurer, root: Path
) -> tuple[list[Case], dict[str, list[BasalVolumes]], list[Case]]:
    """Every case under every shift, and the basal-rule volumes of the unshifted ones (with their cases)."""
    _, validation = split_patients(root)
    cases: list[Case] = []
    basal: dict[str, list[BasalVolumes]] = {"ACDC": [], "Sunnybrook": []}
    clean: list[Case] = []
    for shift in SHIFTS:
        for patient in validation:
            case, volumes = acdc_case(measurer, root, patient, shift)
            cases.append(case)
            if shift == "none":
                basal["ACDC"].append(volumes)
                clean.append(case)
        for patient in sorted(SUNNYBROOK_IDS):
            case, volumes = sunnybrook_case(measurer, root, patient, shift)
            cases.append(case)
            if shift == "none":
                basal["Sunnybrook"].append(volumes)
                clean.append(case)
        print(f"  {shift}: done", flush=True)
    return cases, basal, clean


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation run found, as the model card records it."""

    calibration: Calibration
    #: How a fitted calibration does on patients it was not fitted on; None when the card's own was used.
    held_out: HeldOut | None
    summaries: dict[str, dict[str, float]]
    basal_rules: dict[str, dict[str, dict[str, float]]]
    reliability: list[dict[str, float]]
    cases: list[Case]

    def card_metrics(self) -> dict[str, object]:
        """The ``metrics`` section of the model card."""
        return {
            "command": "python -m models.evaluate",
            "off_means": f"EDV or ESV off by more than {VOLUME_TOLERANCE:.0%} of the expert's",
            "summaries": self.summaries,
            "basal_rules": self.basal_rules,
            "reliability": self.reliability,
            "qc_held_out": None if self.held_out is None else asdict(self.held_out),
        }


def run(measurer: StackMeasurer, root: Path, fit: bool) -> Evaluation:
    """Evaluate; with ``fit``, fit the calibration on the cases and report them with it."""
    cases, basal, clean = evaluate(measurer, root)
    held_out = None
    if fit:
        measurer.calibration, held_out = fit_calibration(cases)
        cases = recalibrated(cases, measurer.calibration)
        clean = recalibrated(clean, measurer.calibration)
    rows: dict[str, dict[str, float]] = {}
    for dataset in ("ACDC", "Sunnybrook"):
        for shift in SHIFTS:
            rows[f"{dataset} / {shift}"] = _summary(
                [c for c in cases if c.dataset == dataset and c.shift == shift]
            )
        rows[f"{dataset} / all shifts"] = _summary(
            [c for c in cases if c.dataset == dataset and c.shift != "none"]
        )
    rows["all / none"] = _summary([c for c in cases if c.shift == "none"])
    rows["all / everything"] = _summary(cases)
    rules: dict[str, dict[str, dict[str, float]]] = {}
    for dataset, volumes in basal.items():
        refs = [(c.ref_edv_ml, c.ref_esv_ml) for c in clean if c.dataset == dataset]
        rules[dataset] = {}
        for rule in ("per_phase", "every_phase", "none"):
            error = np.array([np.subtract(getattr(v, rule), r) for v, r in zip(volumes, refs, strict=True)])
            bias, mae = error.mean(axis=0), np.abs(error).mean(axis=0)
            rules[dataset][rule] = {
                "edv_bias_ml": float(bias[0]),
                "edv_mae_ml": float(mae[0]),
                "esv_bias_ml": float(bias[1]),
                "esv_mae_ml": float(mae[1]),
            }
    return Evaluation(measurer.calibration, held_out, rows, rules, reliability(cases), cases)


def print_report(found: Evaluation) -> None:
    """The evaluation's tables."""
    if found.held_out is not None:
        section = {"qc_calibration": asdict(found.calibration)}
        print(f"calibration fitted on these cases; the card's section:\n{json.dumps(section, indent=1)}")
        held = found.held_out
        print(
            f"held out by patient ({held.patients} patients): AUC of the confidence for off by more than "
            f"15 % {held.auc:.2f} (leave-patient-pair-out); off results check {held.off_checked:.0%}, "
            f"others check {held.good_checked:.0%} (leave-one-patient-out, check_below refitted too)"
        )
    print()
    _print_summaries(found.summaries)
    print("\nBasal rule (unshifted; EDV / ESV against the experts, mL)")
    for dataset, rules in found.basal_rules.items():
        for rule, r in rules.items():
            print(
                f"  {dataset:11s} {rule:12s} EDV bias {r['edv_bias_ml']:6.1f} MAE {r['edv_mae_ml']:5.1f}   "
                f"ESV bias {r['esv_bias_ml']:6.1f} MAE {r['esv_mae_ml']:5.1f}"
            )
    print("\nReliability of the confidence (all cases): bin, results, mean confidence, share within 15 %")
    for row in found.reliability:
        print(
            f"  {row['low']:.1f}-{row['high']:.1f} {row['n']:4.0f} "
            f"{row['mean_confidence']:6.2f} {row['within_15pct']:6.2f}"
        )
    good_flags = Counter(flag for c in found.cases if not c.off for flag in c.flags)
    bad_flags = Counter(flag for c in found.cases if c.off for flag in c.flags)
    print("\nFlags on results within 15 % / off by more:")
    for flag in sorted(set(good_flags) | set(bad_flags)):
        print(f"  {flag:36s} {good_flags[flag]:4d} {bad_flags[flag]:4d}")
    print("\nOff by more than 15 %: dataset, shift, case, EDV ref/model, ESV ref/model, status, confidence")
    for c in found.cases:
        if c.off:
            print(
                f"  {c.dataset:10s} {c.shift:10s} {c.case:11s} {c.ref_edv_ml:6.1f}/{c.edv_ml:6.1f} "
                f"{c.ref_esv_ml:6.1f}/{c.esv_ml:6.1f} {c.status:5s} {c.confidence:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--name", default=MODEL_NAME)
    parser.add_argument("--version", help="a released version (default: the newest)")
    parser.add_argument("--fit", action="store_true", help="fit the QC calibration on these cases")
    parser.add_argument("--json", type=Path, help="also write every case and summary to this file")
    args = parser.parse_args()
    segmenter = Segmenter(find_model(args.model_dir, args.name, args.version))
    measurer = StackMeasurer(segmenter, augment=True)
    print(
        f"model {segmenter.card.name} {segmenter.card.version}; calibration {measurer.calibration}",
        flush=True,
    )
    found = run(measurer, data_root(), args.fit)
    print_report(found)
    if args.json:
        payload = {
            "model": {"name": segmenter.card.name, "version": segmenter.card.version},
            "calibration": asdict(found.calibration),
            **found.card_metrics(),
            "cases": [{**asdict(c), "off": c.off, "terms": c.features.terms()} for c in found.cases],
        }
        args.json.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
