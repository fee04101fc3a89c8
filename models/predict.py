"""Predict with a torch network through the node's own card-driven preprocessing, and score it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from node.inference.card import InputSpec
from node.inference.preprocess import from_model_grid, plan_geometry, to_model_grid


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module,
    frames: npt.NDArray[np.float32],
    pixel_spacing: tuple[float, float],
    spec: InputSpec,
    batch_size: int = 16,
) -> npt.NDArray[np.uint8]:
    """Label map ``(n, rows, cols)`` for already-normalised frames on their original grid."""
    model.eval()
    geometry = plan_geometry(frames.shape[1], frames.shape[2], pixel_spacing, spec)
    out = np.zeros(frames.shape, dtype=np.uint8)
    for start in range(0, frames.shape[0], batch_size):
        batch = to_model_grid(frames[start : start + batch_size], geometry, spec.pad_value)
        logits = model(torch.from_numpy(batch)).numpy()
        out[start : start + batch_size] = from_model_grid(logits, geometry).argmax(axis=1)
    return out


def dice(prediction: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    """Dice overlap; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total
