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
from node.inference.measurements import basal_slices_to_exclude, remove_detached_lv
from node.inference.qc import DETACHED_FLAG_ML, QcFlag, assess, fragmented_fraction
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
    rows = []
    print(f"{'patient':11s} {'EDV err':>8s} {'ESV err':>8s} {'conf':>5s}  flags")
    for patient in validation:
        case = load_acdc(root, patient, segmenter.card.input.normalisation)
        predicted, truth, flip, fragments, uncertain = {}, {}, {}, [], 0
        phases = (("ed", case.ed_image, case.ed_label), ("es", case.es_image, case.es_label))
        segmented = {phase: segmenter.segment(image, spacing, normalised=True) for phase, image, _ in phases}
        # The node's removal of LV labels far from the ventricle, phase by phase (in place).
        detached_px = max(
            int(remove_detached_lv(seg.labels[:, None], blood, myo, background, spacing).sum())
            for seg in segmented.values()
        )
        # The node's basal-slice rule over the two-phase stack (when ED and ES have the same slices).
        basal: list[int] = []
        if case.ed_image.shape == case.es_image.shape:
            stack = np.stack([segmented["ed"].labels, segmented["es"].labels], axis=1)
            basal = list(basal_slices_to_exclude(stack, blood, myo, np.ones(stack.shape[:2], bool)))
        for phase, image, label in phases:
            seg = segmented[phase]
            mirrored = segmenter.segment(np.ascontiguousarray(image[:, :, ::-1]), spacing, normalised=True)
            remove_detached_lv(mirrored.labels[:, None], blood, myo, background, spacing)
            masks = seg.labels == blood
            masks[basal] = False
            mirrored_masks = mirrored.labels == blood
            mirrored_masks[basal] = False
            predicted[phase] = int(masks.sum())
            truth[phase] = int((label == BLOOD_POOL).sum())
            flip[phase] = abs(int(mirrored_masks.sum()) - predicted[phase])
            fragments += [fragmented_fraction(mask) * int(mask.sum()) for mask in masks]
            uncertain += int(seg.uncertain_px.sum())
        edv, esv = predicted["ed"] * voxel_ml, predicted["es"] * voxel_ml
        ed_areas = (segmented["ed"].labels == blood).sum(axis=(1, 2))
        ed_areas[basal] = 0
        total = max(predicted["ed"] + predicted["es"], 1)
        quality = assess(
            edv_ml=edv,
            esv_ml=esv,
            ef_pct=100 * (edv - esv) / edv if edv else 0.0,
            curve_ml=np.array([edv, esv]),
            blood_pool_ed_mm2=ed_areas.astype(float),
            flip_disagreement_ml=max(flip.values()) * voxel_ml,
            fragment_fraction=sum(fragments) / total,
            uncertain_fraction=uncertain / total,
            stack_flags=((QcFlag.BASAL_SLICES_EXCLUDED,) if basal else ())
            + ((QcFlag.DETACHED_LV_REMOVED,) if detached_px * voxel_ml >= DETACHED_FLAG_ML else ()),
        )
        flags = tuple(flag for flag in quality.flags if flag != QcFlag.JAGGED_VOLUME_CURVE)
        errors = {p: abs(predicted[p] - truth[p]) / max(truth[p], 1) for p in ("ed", "es")}
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
