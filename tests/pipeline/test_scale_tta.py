"""The test-time augmentation of scale on real data: the shipped pair segments the ED and ES frames
again with the heart smaller and larger on its grid (``QcFeatures.scale_sensitivity``).

Through the evaluation's own cases (``models.evaluate``), so the figures tested are those the confidence
was calibrated on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="models.evaluate needs torch (the train extra)")

from models.data import acdc_info
from models.evaluate import acdc_case, sunnybrook_case
from node.inference.registry import DEFAULT_MODEL_DIR, find_model
from node.inference.runner import CPU, Segmenter
from node.pipeline.measure import StackMeasurer

#: A Sunnybrook series the model measures well, and an ACDC validation patient it measures badly
#: (ESV off by more than 15 % as stored and under every synthetic shift, ``python -m models.evaluate``).
GOOD_SERIES = "SCD0000101"
FAILING_PATIENT = "patient034"


def test_a_failing_segmentation_moves_with_the_hearts_apparent_size(
    shared_data: Path, sunnybrook: Path
) -> None:
    """Where the model places the border as the image shows it, the volume barely moves with the
    heart's apparent size; on a patient whose volumes it gets wrong it moves several times as much.
    A measurer whose calibration does not weigh the term does not run it."""
    if FAILING_PATIENT not in acdc_info(shared_data):
        pytest.skip(f"ACDC {FAILING_PATIENT} is absent under {shared_data}")
    measurer = StackMeasurer(
        Segmenter(find_model(DEFAULT_MODEL_DIR, "lvseg-unet"), providers=[CPU]), augment=True
    )
    good, _ = sunnybrook_case(measurer, shared_data, GOOD_SERIES, "none")
    bad, _ = acdc_case(measurer, shared_data, FAILING_PATIENT, "none")
    assert not good.off and bad.off
    assert good.features.scale_sensitivity is not None and bad.features.scale_sensitivity is not None
    assert 0.0 < good.features.scale_sensitivity < 0.12
    assert bad.features.scale_sensitivity > 3 * good.features.scale_sensitivity

    skipped, _ = sunnybrook_case(
        StackMeasurer(measurer.segmenter, augment=False), shared_data, GOOD_SERIES, "none"
    )
    assert skipped.features.scale_sensitivity is None and skipped.features.disagreement is None
    assert (skipped.edv_ml, skipped.esv_ml) == (good.edv_ml, good.esv_ml)
