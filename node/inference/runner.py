"""ONNX Runtime inference: one session per model for the life of the process.

The runtime imports no torch. Preprocessing is driven entirely by the model card.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from node.config import InferenceSettings
from node.inference.preprocess import (
    argmax_classes,
    crop_model_grid,
    normalise,
    plan_geometry,
    resample,
    to_model_grid,
)
from node.inference.registry import ReleasedModel, find_model

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return [CUDA, CPU] if CUDA in available else [CPU]


#: A pixel whose most likely class has less probability than this counts as uncertain.
UNCERTAIN_BELOW = 0.6


@dataclass(frozen=True)
class Segmentation:
    """Labels on the original frame grid, with per-frame soft areas for QC.

    Attributes
    ----------
    labels
        ``(n, rows, cols)`` class index per pixel.
    soft_areas_px
        ``(n, classes)`` sum of each class's probability per frame (a soft pixel count).
    uncertain_px
        ``(n,)`` pixels per frame whose most likely class is below ``UNCERTAIN_BELOW``.
    """

    labels: npt.NDArray[np.uint8]
    soft_areas_px: npt.NDArray[np.float32]
    uncertain_px: npt.NDArray[np.int64]


class Segmenter:
    """A released model loaded into one ONNX Runtime session."""

    def __init__(
        self,
        model: ReleasedModel,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        batch_size: int = 8,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = model
        self.card = model.card
        self.batch_size = batch_size
        self._session = ort.InferenceSession(
            str(model.path), options, providers=providers or default_providers()
        )
        self._lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self._session.get_providers())

    def logits(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw network output for a model-grid batch ``(n, 1, H, W)``."""
        with self._lock:
            (out,) = self._session.run(
                [self.card.output.name], {self.card.input.name: np.ascontiguousarray(batch)}
            )
        return np.asarray(out, dtype=np.float32)

    def segment(
        self,
        frames: npt.NDArray[np.generic],
        pixel_spacing: tuple[float, float],
        normalised: bool = False,
    ) -> Segmentation:
        """Segment every frame of one stack ``(n, rows, cols)`` (normalised together, per the card).

        Parameters
        ----------
        frames
            Stored pixel values of every frame of the stack, all on one grid.
        pixel_spacing
            (row, column) spacing in mm, PixelSpacing (0028,0030).
        normalised
            True when ``frames`` are already normalised (training-side evaluation).
        """
        spec = self.card.input
        values = np.asarray(frames, dtype=np.float32) if normalised else normalise(frames, spec.normalisation)
        geometry = plan_geometry(values.shape[1], values.shape[2], pixel_spacing, spec)
        count = values.shape[0]
        labels = np.empty(values.shape, np.uint8)
        soft_areas = np.empty((count, len(self.card.output.classes)), np.float32)
        uncertain = np.empty(count, np.int64)
        # QC statistics come from the model grid; one model pixel covers this many original pixels.
        per_model_pixel = spec.spacing_mm**2 / (pixel_spacing[0] * pixel_spacing[1])
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            batch = to_model_grid(values[start:stop], geometry, spec.pad_value)
            logits = crop_model_grid(self.logits(batch), geometry)
            labels[start:stop] = argmax_classes(
                resample(logits, geometry.from_model_rows, geometry.from_model_cols)
            )
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            soft_areas[start:stop] = probabilities.sum(axis=(2, 3)) * per_model_pixel
            uncertain[start:stop] = np.rint(
                (probabilities.max(axis=1) < UNCERTAIN_BELOW).sum(axis=(1, 2)) * per_model_pixel
            ).astype(np.int64)
        return Segmentation(labels=labels, soft_areas_px=soft_areas, uncertain_px=uncertain)


def load_segmenter(settings: InferenceSettings) -> Segmenter:
    """The configured released model in a new session (checksum verified)."""
    model = find_model(settings.model_dir, settings.model_name, settings.model_version)
    return Segmenter(
        model,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        batch_size=settings.batch_size,
    )
