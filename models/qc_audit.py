"""Audit the node's QC flags on the ACDC validation patients: ``python -m models.qc_audit``.

The aim (measurements issue): every case whose EDV or ESV is off by more than 15 % carries at least
one QC flag. ACDC has only the ED and ES frames and no voxel spacing, so each patient is measured as
a two-phase stack at the nominal spacing (relative volume errors do not depend on the spacing) and
the curve-based check (jagged curve) cannot apply. Prints one row per patient and a summary.
"""

from __future__ import annotations

import argparse

import numpy as np

from models.data import (
    ACDC_NOMINAL_SPACING_MM,
    BLOOD_POOL,
    acdc_patients,
    data_root,
    load_acdc,
    split_patients,
)
from models.spec import MODEL_NAME
from node.domain import ejection_fraction
from node.inference.measurements import LabelGeometry, LvClasses, measure_labels
from node.inference.qc import QcFlag, assess, fragmented_fraction, measurement_flags
from node.inference.registry import DEFAULT_MODEL_DIR, find_model
from node.inference.runner import BACKGROUND, Segmenter

#: Nominal ACDC slice spacing used only for the plausibility range (mL); errors are relative.
NOMINAL_SLICE_SPACING_MM = 10.0
ERROR_LIMIT = 0.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default=MODEL_NAME)
    args = parser.parse_args()
    segmenter = Segmenter(find_model(DEFAULT_MODEL_DIR, args.name))
    blood = segmenter.card.class_index("lv_blood_pool")
    myo = segmenter.card.class_index("lv_myocardium")
    background = segmenter.card.class_index(BACKGROUND)
    root = data_root()
    _, validation = split_patients(acdc_patients(root))
    spacing = (ACDC_NOMINAL_SPACING_MM, ACDC_NOMINAL_SPACING_MM)
    voxel_ml = ACDC_NOMINAL_SPACING_MM**2 * NOMINAL_SLICE_SPACING_MM / 1000.0
    geometry = LabelGeometry(spacing, NOMINAL_SLICE_SPACING_MM)
    classes = LvClasses(blood, myo, background)
    rows = []
    print(f"{'patient':11s} {'EDV err':>8s} {'ESV err':>8s} {'conf':>5s}  flags")
    for patient in validation:
        case = load_acdc(root, patient, segmenter.card.input.normalisation)
        if case.ed_image.shape != case.es_image.shape:
            print(f"{patient:11s} skipped: ED and ES have different slices")
            continue
        images = np.stack([case.ed_image, case.es_image], axis=1)  # (slices, 2 phases, rows, cols)
        slices = images.shape[0]
        segmented = segmenter.segment(images.reshape(-1, *images.shape[2:]), spacing, normalised=True)
        mirrored = segmenter.segment(
            np.ascontiguousarray(images.reshape(-1, *images.shape[2:])[:, :, ::-1]), spacing, normalised=True
        )
        present = np.ones((slices, 2), bool)
        # The node's measurement (the same function), on the prediction and on the mirrored input.
        labels = segmented.labels.reshape(images.shape).astype(np.uint8)
        measured = measure_labels(labels, present, geometry, classes)
        flipped = measure_labels(
            mirrored.labels.reshape(images.shape)[..., ::-1].astype(np.uint8), present, geometry, classes
        )
        curve = np.asarray(measured.measurements.volume_curve_ml)
        predicted = {"ed": float(curve[0]), "es": float(curve[1])}
        truth = {
            phase: float((label == BLOOD_POOL).sum()) * voxel_ml
            for phase, label in (("ed", case.ed_label), ("es", case.es_label))
        }
        masks = [labels[s, p] == blood for s in range(slices) for p in range(2)]
        total = max(sum(int(mask.sum()) for mask in masks), 1)
        edv, esv = predicted["ed"], predicted["es"]
        quality = assess(
            edv_ml=edv,
            esv_ml=esv,
            ef_pct=ejection_fraction(edv, esv),
            curve_ml=curve,
            blood_pool_ed_mm2=measured.blood_pool_px[:, 0] * spacing[0] * spacing[1],
            flip_disagreement_ml=float(
                np.abs(np.asarray(flipped.measurements.volume_curve_ml) - curve).max()
            ),
            fragment_fraction=sum(fragmented_fraction(mask) * int(mask.sum()) for mask in masks) / total,
            uncertain_fraction=int(segmented.uncertain_px.sum()) / total,
            stack_flags=measurement_flags(measured),
        )
        flags = tuple(flag for flag in quality.flags if flag != QcFlag.JAGGED_VOLUME_CURVE)
        errors = {p: abs(predicted[p] - truth[p]) / max(truth[p], 1e-9) for p in ("ed", "es")}
        rows.append((errors, flags, quality.confidence))
        listed = ", ".join(flags) or "-"
        print(f"{patient:11s} {errors['ed']:8.1%} {errors['es']:8.1%} {quality.confidence:5.2f}  {listed}")
    large = [row for row in rows if max(row[0].values()) > ERROR_LIMIT]
    flagged = [row for row in large if row[1]]
    clean = [row for row in rows if max(row[0].values()) <= ERROR_LIMIT]
    print(
        f"\ncases off by > {ERROR_LIMIT:.0%}: {len(large)}; of those flagged: {len(flagged)}; "
        f"cases within {ERROR_LIMIT:.0%} carrying a flag: {sum(1 for row in clean if row[1])} of {len(clean)}"
    )
    if large and clean:
        print(
            f"mean confidence: off by > {ERROR_LIMIT:.0%} {np.mean([r[2] for r in large]):.2f}, "
            f"within {np.mean([r[2] for r in clean]):.2f}"
        )


if __name__ == "__main__":
    main()
