"""Card-driven preprocessing: normalise a stack, resample frames to the model grid and back.

Resampling is separable linear interpolation written as two small matrix products, so the same code
serves the node (numpy only) and training/evaluation, and logits come back to the original pixel grid
with sub-pixel boundaries before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.inference.card import InputSpec, Normalisation

FloatArray = npt.NDArray[np.float32]


def normalise(
    stack: npt.NDArray[np.generic], spec: Normalisation, out: FloatArray | None = None
) -> FloatArray:
    """Map a whole stack's intensities through its own percentiles to the card's range.

    Parameters
    ----------
    stack
        Every frame of one stack (any shape, any numeric dtype).
    spec
        The card's normalisation block.
    out
        A float32 array of the stack's shape to write the result into (``stack`` itself, to
        normalise in place and keep one copy of a large stack); None returns a new array. The values
        are the same either way.
    """
    values = np.asarray(stack, dtype=np.float32)
    low, high = np.percentile(values, [spec.low_percentile, spec.high_percentile])
    scale = float(high - low)
    if scale <= 0.0:
        scale = 1.0
    if out is None:
        shifted = (values - np.float32(low)) / np.float32(scale)
        clipped: FloatArray = np.clip(shifted, spec.clip_min, spec.clip_max).astype(np.float32, copy=False)
        return clipped
    np.subtract(values, np.float32(low), out=out)
    np.divide(out, np.float32(scale), out=out)
    np.clip(out, spec.clip_min, spec.clip_max, out=out)
    return out


def linear_resample_matrix(n_in: int, n_out: int, in_spacing: float, out_spacing: float) -> FloatArray:
    """Matrix ``(n_out, n_in)`` that linearly interpolates a 1-D signal between pixel grids.

    Both grids start at the same edge; output pixel ``j`` has its centre at input index
    ``(j + 0.5) * out_spacing / in_spacing - 0.5``, clamped to the input's extent.
    """
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (out_spacing / in_spacing) - 0.5
    centres = np.clip(centres, 0.0, n_in - 1.0)
    left = np.floor(centres).astype(np.int64)
    right = np.minimum(left + 1, n_in - 1)
    weight = centres - left
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, left), (1.0 - weight).astype(np.float32))
    np.add.at(matrix, (rows, right), weight.astype(np.float32))
    return matrix


def resample(frames: FloatArray, matrix_rows: FloatArray, matrix_cols: FloatArray) -> FloatArray:
    """Apply row and column interpolation matrices to ``(..., rows, cols)`` arrays.

    Done as two large matrix products over every image at once (not one small product per image).
    """
    *lead, rows, cols = frames.shape
    out_rows, out_cols = matrix_rows.shape[0], matrix_cols.shape[0]
    images = int(np.prod(lead)) if lead else 1
    across = np.asarray(frames, dtype=np.float32).reshape(images * rows, cols) @ matrix_cols.T
    stacked = across.reshape(images, rows, out_cols).transpose(1, 0, 2).reshape(rows, images * out_cols)
    down = matrix_rows @ stacked
    result: FloatArray = np.ascontiguousarray(
        down.reshape(out_rows, images, out_cols).transpose(1, 0, 2), dtype=np.float32
    ).reshape(*lead, out_rows, out_cols)
    return result


@dataclass(frozen=True)
class Geometry:
    """How one frame grid maps onto the model grid and back."""

    rows: int
    cols: int
    model_rows: int
    model_cols: int
    pad_top: int
    pad_left: int
    padded_rows: int
    padded_cols: int
    to_model_rows: FloatArray
    to_model_cols: FloatArray
    from_model_rows: FloatArray
    from_model_cols: FloatArray


def plan_geometry(rows: int, cols: int, pixel_spacing: tuple[float, float], spec: InputSpec) -> Geometry:
    """Plan resampling to ``spec.spacing_mm`` and centred padding to ``spec.size_multiple``.

    Parameters
    ----------
    rows, cols
        The original frame size.
    pixel_spacing
        (row spacing, column spacing) in mm, as DICOM PixelSpacing (0028,0030).
    """
    row_mm, col_mm = pixel_spacing
    model_rows = max(1, round(rows * row_mm / spec.spacing_mm))
    model_cols = max(1, round(cols * col_mm / spec.spacing_mm))
    multiple = spec.size_multiple
    padded_rows = -(-model_rows // multiple) * multiple
    padded_cols = -(-model_cols // multiple) * multiple
    return Geometry(
        rows=rows,
        cols=cols,
        model_rows=model_rows,
        model_cols=model_cols,
        pad_top=(padded_rows - model_rows) // 2,
        pad_left=(padded_cols - model_cols) // 2,
        padded_rows=padded_rows,
        padded_cols=padded_cols,
        to_model_rows=linear_resample_matrix(rows, model_rows, row_mm, spec.spacing_mm),
        to_model_cols=linear_resample_matrix(cols, model_cols, col_mm, spec.spacing_mm),
        from_model_rows=linear_resample_matrix(model_rows, rows, spec.spacing_mm, row_mm),
        from_model_cols=linear_resample_matrix(model_cols, cols, spec.spacing_mm, col_mm),
    )


def to_model_grid(frames: FloatArray, geometry: Geometry, pad_value: float) -> FloatArray:
    """Resample normalised ``(n, rows, cols)`` frames to the padded model grid ``(n, 1, H, W)``."""
    resampled = resample(frames, geometry.to_model_rows, geometry.to_model_cols)
    batch = np.full(
        (frames.shape[0], 1, geometry.padded_rows, geometry.padded_cols), pad_value, dtype=np.float32
    )
    top, left = geometry.pad_top, geometry.pad_left
    batch[:, 0, top : top + geometry.model_rows, left : left + geometry.model_cols] = resampled
    return batch


def crop_model_grid(logits: FloatArray, geometry: Geometry) -> FloatArray:
    """Remove the padding from ``(n, classes, H, W)`` model output (still on the model grid)."""
    top, left = geometry.pad_top, geometry.pad_left
    return np.ascontiguousarray(
        logits[:, :, top : top + geometry.model_rows, left : left + geometry.model_cols]
    )


def from_model_grid(logits: FloatArray, geometry: Geometry) -> FloatArray:
    """Crop padded ``(n, classes, H, W)`` logits and resample them to ``(n, classes, rows, cols)``."""
    return resample(crop_model_grid(logits, geometry), geometry.from_model_rows, geometry.from_model_cols)


def argmax_classes(scores: FloatArray) -> npt.NDArray[np.uint8]:
    """Class index of the largest score along axis 1 of ``(n, classes, rows, cols)`` (first on ties).

    Equivalent to ``scores.argmax(axis=1)``, written as a pass per class because numpy's reduction
    over a short, strided axis is several times slower.
    """
    best = scores[:, 0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for index in range(1, scores.shape[1]):
        better = scores[:, index] > best
        labels[better] = index
        np.maximum(best, scores[:, index], out=best)
    return labels
