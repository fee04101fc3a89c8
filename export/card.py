"""The model card written beside the released .onnx: what the node and a reader need to know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from node.inference.card import InputSpec, ModelCard, OutputSpec

ACDC_CITATION = (
    'Bernard O. et al., "Deep Learning Techniques for Automatic MRI Cardiac Multi-structures '
    'Segmentation and Diagnosis: Is the Problem Solved?", IEEE TMI 37(11), 2018.'
)
SUNNYBROOK_CITATION = (
    "Radau P, Lu Y, Connelly K, Paul G, Dick AJ, Wright GA. Evaluation Framework for Algorithms "
    "Segmenting Short Axis Cardiac MRI. The MIDAS Journal - Cardiac MR Left Ventricle Segmentation "
    "Challenge, 2009."
)

ARCHITECTURE_NOTE = (
    "2-D U-Net (Ronneberger et al. 2015): five levels, batch-normalised double 3x3 convolutions, "
    "max-pool down, transposed-convolution up, skip connections, at 2 mm/pixel, 8-16-32-64-128 "
    "channels (0.49 M parameters, 1.0.0's network). A wider one (8-24-48-128-256, 1.8 M parameters, "
    "~2.6 s against ~1.5 s for a 240-frame stack in torch on 2 cores) trained on the same data and "
    "augmentation did worse within the CPU training budget. Logits are interpolated back to the "
    "original grid before the argmax, so contours stay sub-pixel."
)


def build_card(
    *,
    name: str,
    version: str,
    file: str,
    sha256: str,
    spec: InputSpec,
    output: OutputSpec,
    extra: dict[str, Any],
) -> ModelCard:
    """Validate the card through the same schema the node loads it with."""
    return ModelCard.model_validate(
        {
            "name": name,
            "version": version,
            "file": file,
            "sha256": sha256,
            "input": spec.model_dump(mode="json"),
            "output": output.model_dump(mode="json"),
            **extra,
        }
    )


def write_card(card: ModelCard, path: Path) -> None:
    """Write the card as indented JSON."""
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
