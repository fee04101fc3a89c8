"""The released model's identity and input contract: the single source the card is written from."""

from __future__ import annotations

from node.inference.card import InputSpec, Normalisation, OutputSpec

MODEL_NAME = "lvseg-unet"
MODEL_VERSION = "2.0.0"

#: Channel widths per U-Net level (stride 2**(levels-1)): 1.0.0's network (0.49 M parameters). A wider
#: one (8, 24, 48, 128, 256: 1.8 M) trained on the same data and augmentation did worse within the
#: CPU training budget (the card's ``rejected`` section).
CHANNELS = (8, 16, 32, 64, 128)

INPUT = InputSpec(
    name="image",
    channels=("MR magnitude",),
    spacing_mm=2.0,
    size_multiple=2 ** (len(CHANNELS) - 1),
    pad_value=0.0,
    normalisation=Normalisation(low_percentile=1.0, high_percentile=99.0, clip_min=0.0, clip_max=1.0),
)

OUTPUT = OutputSpec(
    name="logits",
    classes=("background", "right_ventricle", "lv_myocardium", "lv_blood_pool"),
)


def artifact_stem() -> str:
    """``<name>-<version>``: the file stem of the released .onnx and its card."""
    return f"{MODEL_NAME}-{MODEL_VERSION}"
