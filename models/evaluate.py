"""Evaluate a released model: ``python -m models.evaluate [--model models/<name>-<version>.onnx]``.

Prints Dice per class on the ACDC validation patients at ED and ES, and on the three Sunnybrook
series (Radau et al. 2009, CC0; validation only, never training) EDV / ESV / EF against the expert
contours, both over the slices the expert contoured and over the whole stack.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.data import (
    ACDC_NOMINAL_SPACING_MM,
    SUNNYBROOK_IDS,
    acdc_patients,
    data_root,
    load_acdc,
    load_sunnybrook,
    polygon_area,
    split_patients,
)
from models.predict import dice
from models.spec import MODEL_NAME
from node.inference.measurements import LabelGeometry, LvClasses, measure_labels, remove_detached_lv
from node.inference.registry import DEFAULT_MODEL_DIR, find_model
from node.inference.runner import BACKGROUND, Segmenter

BLOOD_POOL_CLASS = "lv_blood_pool"
MYOCARDIUM_CLASS = "lv_myocardium"


@dataclass(frozen=True)
class SunnybrookResult:
    """Model against expert for one series."""

    patient: str
    ref_edv_ml: float
    ref_esv_ml: float
    ref_ef_pct: float
    contoured_edv_ml: float
    contoured_esv_ml: float
    contoured_ef_pct: float
    stack_edv_ml: float
    stack_esv_ml: float
    stack_ef_pct: float
    expert_ed_phases: tuple[int, ...]
    expert_es_phases: tuple[int, ...]
    model_ed_phase: int
    model_es_phase: int
    dice_ed: float
    dice_es: float


def _ef(edv: float, esv: float) -> float:
    return 100.0 * (edv - esv) / edv if edv > 0 else 0.0


def evaluate_acdc(segmenter: Segmenter, root: Path) -> dict[str, float]:
    """Mean per-volume Dice of each foreground class at ED and ES on the ACDC validation split."""
    _, validation = split_patients(acdc_patients(root))
    classes = segmenter.card.output.classes
    scores: dict[str, list[float]] = {}
    spacing = (ACDC_NOMINAL_SPACING_MM, ACDC_NOMINAL_SPACING_MM)
    for patient in validation:
        case = load_acdc(root, patient, segmenter.card.input.normalisation)
        volumes = (("ED", case.ed_image, case.ed_label), ("ES", case.es_image, case.es_label))
        for phase, image, label in volumes:
            labels = segmenter.segment(image, spacing, normalised=True).labels
            for index, name in enumerate(classes):
                if index == 0:
                    continue
                scores.setdefault(f"{phase} {name}", []).append(dice(labels == index, label == index))
    return {key: float(np.mean(values)) for key, values in scores.items()}


def evaluate_sunnybrook(segmenter: Segmenter, root: Path, patient: str) -> SunnybrookResult:
    """Volumes over contoured slices and over the whole stack, against the expert's contours."""
    case = load_sunnybrook(root, patient)
    slices, phases, rows, columns = case.frames.shape
    segmentation = segmenter.segment(case.frames.reshape(-1, rows, columns), case.pixel_spacing)
    labels = segmentation.labels.reshape(slices, phases, rows, columns)
    blood = segmenter.card.class_index(BLOOD_POOL_CLASS)
    myo = segmenter.card.class_index(MYOCARDIUM_CLASS)
    pixel_area = case.pixel_spacing[0] * case.pixel_spacing[1]
    classes = LvClasses(blood, myo, segmenter.card.class_index(BACKGROUND))
    # The whole stack as the node measures it (the same function, on a copy): detached LV labels and
    # basal slices that are not ventricle throughout left out.
    whole = measure_labels(
        labels.copy(),
        np.ones((slices, phases), bool),
        LabelGeometry(case.pixel_spacing, case.slice_spacing_mm),
        classes,
    ).measurements
    # The contoured slices compare every contoured slice, basal ones too, with detached labels removed.
    remove_detached_lv(labels, blood, myo, classes.background, case.pixel_spacing)
    by_slice: dict[int, list[int]] = {}
    for slice_index, phase in case.contours:
        by_slice.setdefault(slice_index, []).append(phase)
    ref = {"ED": 0.0, "ES": 0.0}
    model = {"ED": 0.0, "ES": 0.0}
    dices: dict[str, list[float]] = {"ED": [], "ES": []}
    expert_phases: dict[str, set[int]] = {"ED": set(), "ES": set()}
    millilitres = pixel_area * case.spacing_between_slices_mm / 1000.0
    for slice_index, contoured in by_slice.items():
        ordered = sorted(contoured, key=lambda p: polygon_area(case.contours[(slice_index, p)]))
        for which, phase in (("ES", ordered[0]), ("ED", ordered[-1])):
            expert_phases[which].add(phase)
            ref[which] += polygon_area(case.contours[(slice_index, phase)]) * millilitres
            predicted = labels[slice_index, phase] == blood
            model[which] += float(predicted.sum()) * millilitres
            dices[which].append(dice(predicted, case.contour_mask(slice_index, phase)))
    return SunnybrookResult(
        patient=patient,
        ref_edv_ml=ref["ED"],
        ref_esv_ml=ref["ES"],
        ref_ef_pct=_ef(ref["ED"], ref["ES"]),
        contoured_edv_ml=model["ED"],
        contoured_esv_ml=model["ES"],
        contoured_ef_pct=_ef(model["ED"], model["ES"]),
        stack_edv_ml=whole.edv_ml,
        stack_esv_ml=whole.esv_ml,
        stack_ef_pct=whole.ef_pct,
        expert_ed_phases=tuple(sorted(expert_phases["ED"])),
        expert_es_phases=tuple(sorted(expert_phases["ES"])),
        model_ed_phase=whole.ed_phase,
        model_es_phase=whole.es_phase,
        dice_ed=float(np.mean(dices["ED"])),
        dice_es=float(np.mean(dices["ES"])),
    )


def summarise(results: list[SunnybrookResult]) -> dict[str, float]:
    """Mean absolute errors against the expert, over contoured slices and over the whole stack."""

    def mae(model: str, ref: str) -> float:
        return float(np.mean([abs(getattr(r, model) - getattr(r, ref)) for r in results]))

    return {
        "contoured_edv_mae_ml": mae("contoured_edv_ml", "ref_edv_ml"),
        "contoured_esv_mae_ml": mae("contoured_esv_ml", "ref_esv_ml"),
        "contoured_ef_mae_pct": mae("contoured_ef_pct", "ref_ef_pct"),
        "stack_edv_mae_ml": mae("stack_edv_ml", "ref_edv_ml"),
        "stack_esv_mae_ml": mae("stack_esv_ml", "ref_esv_ml"),
        "stack_ef_mae_pct": mae("stack_ef_pct", "ref_ef_pct"),
        "dice_ed_mean": float(np.mean([r.dice_ed for r in results])),
        "dice_es_mean": float(np.mean([r.dice_es for r in results])),
    }


def evaluate(segmenter: Segmenter, root: Path) -> dict[str, object]:
    """Every metric, as the model card records them."""
    acdc = evaluate_acdc(segmenter, root)
    sunnybrook = [evaluate_sunnybrook(segmenter, root, patient) for patient in sorted(SUNNYBROOK_IDS)]
    return {
        "acdc_validation_dice": acdc,
        "sunnybrook_summary": summarise(sunnybrook),
        "sunnybrook_per_patient": [asdict(result) for result in sunnybrook],
    }


def print_report(metrics: dict[str, object]) -> None:
    """Human-readable tables of :func:`evaluate`'s output."""
    acdc = metrics["acdc_validation_dice"]
    assert isinstance(acdc, dict)
    print("ACDC validation Dice (mean over patients)")
    for key, value in acdc.items():
        print(f"  {key:28s} {value:.3f}")
    print("\nSunnybrook (expert contours; mL, %)")
    header = (
        f"{'patient':12s} {'ref EDV':>8s} {'ref ESV':>8s} {'ref EF':>7s} | {'cont EDV':>8s} "
        f"{'cont ESV':>8s} {'cont EF':>7s} | {'stack EDV':>9s} {'stack ESV':>9s} {'stack EF':>8s} "
        f"| {'ED ph exp/mod':>13s} {'ES ph exp/mod':>13s} | {'Dice ED':>7s} {'Dice ES':>7s}"
    )
    print(header)
    per_patient = metrics["sunnybrook_per_patient"]
    assert isinstance(per_patient, list)
    for r in per_patient:
        print(
            f"{r['patient']:12s} {r['ref_edv_ml']:8.1f} {r['ref_esv_ml']:8.1f} {r['ref_ef_pct']:7.1f} | "
            f"{r['contoured_edv_ml']:8.1f} {r['contoured_esv_ml']:8.1f} {r['contoured_ef_pct']:7.1f} | "
            f"{r['stack_edv_ml']:9.1f} {r['stack_esv_ml']:9.1f} {r['stack_ef_pct']:8.1f} | "
            f"{'/'.join(map(str, r['expert_ed_phases'])) + ' / ' + str(r['model_ed_phase']):>13s} "
            f"{'/'.join(map(str, r['expert_es_phases'])) + ' / ' + str(r['model_es_phase']):>13s} | "
            f"{r['dice_ed']:7.3f} {r['dice_es']:7.3f}"
        )
    summary = metrics["sunnybrook_summary"]
    assert isinstance(summary, dict)
    print("\nSunnybrook mean absolute error")
    for key, value in summary.items():
        print(f"  {key:24s} {value:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--name", default=MODEL_NAME)
    parser.add_argument("--json", type=Path, help="also write the metrics to this file")
    args = parser.parse_args()
    segmenter = Segmenter(find_model(args.model_dir, args.name))
    metrics = evaluate(segmenter, data_root())
    print(f"model {segmenter.card.name} {segmenter.card.version}")
    print_report(metrics)
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
