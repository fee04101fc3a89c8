"""The QC companion on real data: the shipped model's second network measures the ED and ES frames again.

Through the evaluation's own Sunnybrook case (``models.evaluate``), so the figure tested is the one the
confidence was calibrated on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="models.evaluate needs torch (the train extra)")

from models.evaluate import sunnybrook_case
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
