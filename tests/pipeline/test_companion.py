"""The QC companion on real data: the shipped model's second network measures the ED and ES frames again.

Through the evaluation's own Sunnybrook case (``models.evaluate``), so the figure tested is the one the
confidence was calibrated on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="models.evaluate needs torch (the train extra)")

from models.data import load_sunnybrook
from models.evaluate import sunnybrook_case
from node.domain import BasalRule
from node.inference.measurements import LabelGeometry, LvClasses, Measurements, base_is_last, measure_labels
from node.inference.preprocess import normalise
from node.inference.registry import DEFAULT_MODEL_DIR, find_model
from node.inference.runner import CPU, Segmenter
from node.pipeline.measure import StackMeasurer

PATIENT = "SCD0000101"


def test_the_companion_measures_ed_and_es_again_and_the_model_agrees_with_itself(
    shared_data: Path, sunnybrook: Path
) -> None:
    """The shipped companion, another network, lies a few per cent from the pair on a series both
    measure well. The model run as its own companion is the model alone: the same volumes and
    test-time-augmentation figures, and a companion term of nothing, so the term measures the networks,
    not the plumbing."""
    released = find_model(DEFAULT_MODEL_DIR, "lvseg-unet")
    assert released.companion is not None, "the default model ships with its companion network"
    pair, _ = sunnybrook_case(
        StackMeasurer(Segmenter(released, providers=[CPU]), augment=True), shared_data, PATIENT, "none"
    )
    assert 0.0 < pair.features.companion_disagreement < 0.15
    assert not pair.off

    single = replace(released, companion=None)
    alone, _ = sunnybrook_case(
        StackMeasurer(Segmenter(single, providers=[CPU]), augment=True), shared_data, PATIENT, "none"
    )
    itself = replace(released, companion=single)
    same, _ = sunnybrook_case(
        StackMeasurer(Segmenter(itself, providers=[CPU]), augment=True), shared_data, PATIENT, "none"
    )
    assert alone.features.companion_disagreement == 0.0
    assert same.features.companion_disagreement == pytest.approx(0.0, abs=0.002)
    assert same.features.disagreement == pytest.approx(alone.features.disagreement, abs=0.002)
    assert (same.edv_ml, same.esv_ml) == pytest.approx((alone.edv_ml, alone.esv_ml), abs=0.5)


def test_the_pair_segments_the_ed_and_es_phases_and_the_model_alone_the_others(
    shared_data: Path, sunnybrook: Path
) -> None:
    """With a companion, the model alone segments the 240 frames and the pair (the ensemble the
    volumes come from) the ED and ES phases again: the same phases and volumes as the pair on every
    frame, and all but a few phases exactly as the model alone labels them."""
    case = load_sunnybrook(shared_data, PATIENT)
    slices, phases, rows, cols = case.frames.shape
    measurer = StackMeasurer(Segmenter(find_model(DEFAULT_MODEL_DIR, "lvseg-unet"), providers=[CPU]))
    values = normalise(case.frames.reshape(-1, rows, cols), measurer.segmenter.card.input.normalisation)
    present = np.ones((slices, phases), dtype=bool)
    geometry = LabelGeometry(case.pixel_spacing, case.slice_spacing_mm, base_is_last(case.normal))
    card = measurer.segmenter.card
    blood, myo, background = (card.class_index(n) for n in ("lv_blood_pool", "lv_myocardium", "background"))
    classes = LvClasses(blood, myo, background)

    def measured_by(alone: bool, rule: BasalRule = BasalRule.PER_PHASE) -> tuple[np.ndarray, Measurements]:
        found = measurer.segmenter.segment(values, case.pixel_spacing, normalised=True, alone=alone)
        grid = found.labels.reshape(slices, phases, rows, cols).copy()
        return grid, measure_labels(grid, present, geometry, classes, rule).measurements

    assessed = measurer.assess(values, present, geometry)
    result = assessed.measured.measurements
    everywhere_labels, everywhere = measured_by(alone=False)
    alone_labels, _ = measured_by(alone=True)
    assert (result.ed_phase, result.es_phase) == (everywhere.ed_phase, everywhere.es_phase)
    assert (result.edv_ml, result.esv_ml) == pytest.approx((everywhere.edv_ml, everywhere.esv_ml), abs=1.0)
    key = [result.ed_phase, result.es_phase]
    # Phases the pair segmented again: ED and ES, and those it found on the way (one or two more).
    refined = [p for p in range(phases) if not np.array_equal(assessed.labels[:, p], alone_labels[:, p])]
    assert set(key) <= set(refined)
    assert len(refined) <= phases // 4
    # ED and ES are the pair's: closer to the pair on every frame than to the model alone.
    to_pair = int((assessed.labels[:, key] != everywhere_labels[:, key]).sum())
    to_alone = int((assessed.labels[:, key] != alone_labels[:, key]).sum())
    assert to_pair < to_alone
    # The every-phase rule judges each basal slice by all phases: there the pair segments every frame.
    every = measurer.assess(values, present, geometry, basal_rule=BasalRule.EVERY_PHASE)
    every_labels, _ = measured_by(alone=False, rule=BasalRule.EVERY_PHASE)
    np.testing.assert_array_equal(every.labels, every_labels)
