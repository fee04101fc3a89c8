"""The model card: the JSON file released beside each ``.onnx`` that drives preprocessing.

The node never hard-codes a spacing, a size rule or a normalisation: it reads them from the card,
so a retrained model with other choices runs without a code change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Normalisation(BaseModel):
    """Robust per-stack intensity normalisation: percentiles over every frame of the stack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["percentile"] = "percentile"
    scope: Literal["stack"] = "stack"
    low_percentile: float = Field(ge=0.0, le=50.0)
    high_percentile: float = Field(ge=50.0, le=100.0)
    clip_min: float
    clip_max: float


class InputSpec(BaseModel):
    """What the network expects: one channel, NCHW float32, at a fixed in-plane spacing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    channels: tuple[str, ...]
    spacing_mm: float = Field(gt=0.0)
    size_multiple: int = Field(ge=1)
    pad_value: float
    normalisation: Normalisation


class OutputSpec(BaseModel):
    """What the network returns: per-class logits on the input grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["logits"] = "logits"
    classes: tuple[str, ...]


class QcCalibrationSpec(BaseModel):
    """How this model's QC features (:data:`node.inference.qc.CALIBRATION_TERMS`) map to a confidence
    (:class:`node.inference.qc.Calibration`), fitted on validation data by ``python -m models.evaluate``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    intercept: float
    #: Weight of each named term of :meth:`node.inference.qc.QcFeatures.terms`.
    coefficients: dict[str, float]
    check_below: float = Field(ge=0.0, le=1.0)


class CompanionSpec(BaseModel):
    """A second network released with the model: the same network, augmentation and data from another
    seed (its own training command is in the card; 2.0.0's trained one cycle shorter than the model).

    The node averages the two networks' logits on the ED and ES phases, which the model alone finds
    on every frame (a deep ensemble after Lakshminarayanan et al., NeurIPS 2017, who average
    probabilities: steadier volumes on scanners unlike the training data;
    :meth:`node.pipeline.measure.StackMeasurer.assess`). How far the companion alone lies from the
    pair on the ED and ES frames is measured for QC and weighed where the card's calibration chose it
    (2.0.0's did not). Same input, output and preprocessing as the model.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    file: str
    sha256: str


class ModelCard(BaseModel):
    """The released model card (``models/<name>-<version>.json``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    version: str
    file: str
    sha256: str
    input: InputSpec
    output: OutputSpec
    #: Absent on cards released before QC 2 (1.0.0): the node then uses its default calibration.
    qc_calibration: QcCalibrationSpec | None = None
    #: Absent on cards released without one (1.0.0): the model runs alone, the companion term is 0.
    companion: CompanionSpec | None = None

    def class_index(self, label: str) -> int:
        """Index of an output class by its name, e.g. ``lv_blood_pool``."""
        return self.output.classes.index(label)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(path: Path) -> ModelCard:
    """Read and validate a model card JSON file."""
    return ModelCard.model_validate_json(path.read_text(encoding="utf-8"))
