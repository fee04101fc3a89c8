"""Card-driven preprocessing: normalise a stack, resample frames to the model grid and back.

Resampling is separable linear interpolation written as two small matrix products, so the same code
serves the node (numpy only) and training/evaluation, and logits come back to the original pixel grid
with sub-pixel boundaries before the argmax. A :class:`Window` restricts both directions to a
rectangle of the model grid (e.g. around the heart) without changing the result inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.inference.card import InputSpec, Normalisation

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.intp]


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


@dataclass(frozen=True)
class Taps:
    """A linear interpolation matrix as the (at most) two non-zero weights of each output pixel.

    ``out[o] = first_weight[o] * x[first[o]] + second_weight[o] * x[second[o]]``; a row with one
    non-zero weight repeats it in ``second`` with weight 0.
    """

    first: IndexArray
    second: IndexArray
    first_weight: FloatArray
    second_weight: FloatArray

    @classmethod
    def of(cls, matrix: FloatArray) -> Taps:
        """The taps of an interpolation matrix ``(n_out, n_in)`` (at most two non-zero weights a row)."""
        nonzero = matrix != 0
        if (nonzero.sum(axis=1) > 2).any():
            raise ValueError("an interpolation matrix has at most two non-zero weights per row")
        outputs = np.arange(matrix.shape[0])
        first = nonzero.argmax(axis=1)
        second = matrix.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)
        second_weight = np.where(second != first, matrix[outputs, second], 0.0).astype(np.float32)
        return cls(
            first=first,
            second=second,
            first_weight=matrix[outputs, first].astype(np.float32),
            second_weight=second_weight,
        )


def interpolated_argmax(scores: FloatArray, rows: Taps, cols: Taps) -> npt.NDArray[np.uint8]:
    """``argmax_classes(resample(scores, ...))`` for ``(n, classes, h, w)``, interpolating only where needed.

    Interpolation weights are non-negative, so where every model pixel an output pixel draws on has
    the same most likely class, that class stays the most likely: only output pixels that draw on
    model pixels of different classes (class boundaries, a few percent) are interpolated.
    """
    coarse = argmax_classes(scores)
    upper, lower = coarse[:, rows.first], coarse[:, rows.second]
    labels = upper[:, :, cols.first]
    mixed = labels != upper[:, :, cols.second]
    mixed |= labels != lower[:, :, cols.first]
    mixed |= labels != lower[:, :, cols.second]
    frame, row, col = np.nonzero(mixed)
    top, bottom, left, right = rows.first[row], rows.second[row], cols.first[col], cols.second[col]
    left_weight = cols.first_weight[col][:, None]
    right_weight = cols.second_weight[col][:, None]
    upper_values = scores[frame, :, top, left] * left_weight + scores[frame, :, top, right] * right_weight
    lower_values = (
        scores[frame, :, bottom, left] * left_weight + scores[frame, :, bottom, right] * right_weight
    )
    values = upper_values * rows.first_weight[row][:, None] + lower_values * rows.second_weight[row][:, None]
    labels[frame, row, col] = values.argmax(axis=1).astype(np.uint8)
    return labels


@dataclass(frozen=True)
class Box:
    """A rectangle of original frame pixels: rows ``top:bottom``, columns ``left:right``."""

    top: int
    left: int
    bottom: int
    right: int

    def mirrored(self, cols: int) -> Box:
        """The same rectangle in a frame of ``cols`` columns mirrored left to right."""
        return Box(top=self.top, left=cols - self.right, bottom=self.bottom, right=cols - self.left)


@dataclass(frozen=True)
class Window:
    """A rectangle of the padded model grid and the parts of the original frame it reads and writes.

    Attributes
    ----------
    top, left, height, width
        The rectangle on the padded model grid.
    inner_top, inner_left, inner_rows, inner_cols
        The part of the rectangle on the model grid proper (not padding), relative to the rectangle.
    source_rows, source_cols
        Original pixels the inner model pixels interpolate from.
    target_rows, target_cols
        Original pixels interpolated from inner model pixels only: the labels the window decides.
    to_model_rows, to_model_cols
        The geometry's interpolation matrices to the model grid restricted to those pixels.
    from_model_rows, from_model_cols
        The taps of the matrices back to the frame restricted likewise. Every weight left out is
        zero: resampling through the window equals resampling the whole frame over that region.
    """

    top: int
    left: int
    height: int
    width: int
    inner_top: int
    inner_left: int
    inner_rows: int
    inner_cols: int
    source_rows: slice
    source_cols: slice
    target_rows: slice
    target_cols: slice
    to_model_rows: FloatArray
    to_model_cols: FloatArray
    from_model_rows: Taps
    from_model_cols: Taps


@dataclass(frozen=True)
class _Axis:
    """One axis of a :class:`Window`."""

    inner_start: int
    inner_size: int
    source: slice
    target: slice
    to_model: FloatArray
    from_model: Taps


def _window_axis(start: int, stop: int, pad: int, to_model: FloatArray, from_model: FloatArray) -> _Axis:
    """Restrict one axis's interpolation matrices to padded model pixels ``start:stop``."""
    model_size = to_model.shape[0]
    first = min(max(start - pad, 0), model_size)
    last = min(max(stop - pad, first), model_size)
    to_inner = to_model[first:last]
    used = np.flatnonzero(to_inner.any(axis=0))
    if last - first == model_size:  # the whole axis: the whole matrix, the products of the whole grid
        used = np.arange(to_model.shape[1])
    source = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 0)
    # An original pixel is decided by the window when none of its weight falls outside it.
    outside = from_model[:, :first].any(axis=1) | from_model[:, last:].any(axis=1)
    inside = np.flatnonzero(~outside)
    target = slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)
    return _Axis(
        inner_start=first + pad - start,
        inner_size=last - first,
        source=source,
        target=target,
        to_model=np.ascontiguousarray(to_inner[:, source]),
        from_model=Taps.of(from_model[target, first:last]),
    )


def plan_window(geometry: Geometry, top: int, left: int, height: int, width: int) -> Window:
    """The window of the padded model grid at ``(top, left)`` of ``height x width`` pixels."""
    rows = _window_axis(top, top + height, geometry.pad_top, geometry.to_model_rows, geometry.from_model_rows)
    cols = _window_axis(
        left, left + width, geometry.pad_left, geometry.to_model_cols, geometry.from_model_cols
    )
    return Window(
        top=top,
        left=left,
        height=height,
        width=width,
        inner_top=rows.inner_start,
        inner_left=cols.inner_start,
        inner_rows=rows.inner_size,
        inner_cols=cols.inner_size,
        source_rows=rows.source,
        source_cols=cols.source,
        target_rows=rows.target,
        target_cols=cols.target,
        to_model_rows=rows.to_model,
        to_model_cols=cols.to_model,
        from_model_rows=rows.from_model,
        from_model_cols=cols.from_model,
    )


def full_window(geometry: Geometry) -> Window:
    """The whole padded model grid as a window (the whole frame is read and written)."""
    return plan_window(geometry, 0, 0, geometry.padded_rows, geometry.padded_cols)


def _span(start: float, stop: float, margin: int, multiple: int, size: int) -> tuple[int, int]:
    """``start:stop`` widened by ``margin``, snapped outwards to ``multiple``, kept within ``0:size``."""
    first = max(0, int(np.floor((start - margin) / multiple)) * multiple)
    last = min(size, -(-int(np.ceil(stop + margin)) // multiple) * multiple)
    return first, last - first


def heart_window(
    geometry: Geometry, box: Box, pixel_spacing: tuple[float, float], spec: InputSpec, margin: int
) -> Window:
    """The window around ``box`` (original pixels) plus ``margin`` model pixels on every side.

    Its edges lie on multiples of ``spec.size_multiple`` of the padded grid, so the network's pooling
    sees the window's pixels in the same phase as on the whole grid.
    """
    row_scale = pixel_spacing[0] / spec.spacing_mm
    col_scale = pixel_spacing[1] / spec.spacing_mm
    top, height = _span(
        box.top * row_scale + geometry.pad_top,
        box.bottom * row_scale + geometry.pad_top,
        margin,
        spec.size_multiple,
        geometry.padded_rows,
    )
    left, width = _span(
        box.left * col_scale + geometry.pad_left,
        box.right * col_scale + geometry.pad_left,
        margin,
        spec.size_multiple,
        geometry.padded_cols,
    )
    return plan_window(geometry, top, left, height, width)


def frame_box(
    model_mask: npt.NDArray[np.bool_], pixel_spacing: tuple[float, float], spec: InputSpec
) -> Box | None:
    """The original pixels covered by the true pixels of a model-grid mask; None when none is true.

    Model pixels ``first:last`` cover the frame from ``first * spacing_mm`` to ``last * spacing_mm``.
    """
    rows = np.flatnonzero(model_mask.any(axis=1))
    cols = np.flatnonzero(model_mask.any(axis=0))
    if rows.size == 0:
        return None
    row_scale = spec.spacing_mm / pixel_spacing[0]
    col_scale = spec.spacing_mm / pixel_spacing[1]
    return Box(
        top=int(np.floor(rows[0] * row_scale)),
        left=int(np.floor(cols[0] * col_scale)),
        bottom=int(np.ceil((rows[-1] + 1) * row_scale)),
        right=int(np.ceil((cols[-1] + 1) * col_scale)),
    )


def window_to_model_grid(frames: FloatArray, window: Window, pad_value: float) -> FloatArray:
    """Resample normalised ``(n, rows, cols)`` frames onto ``window`` of the model grid: ``(n, 1, h, w)``."""
    source = frames[:, window.source_rows, window.source_cols]
    resampled = resample(source, window.to_model_rows, window.to_model_cols)
    batch = np.full((frames.shape[0], 1, window.height, window.width), pad_value, dtype=np.float32)
    top, left = window.inner_top, window.inner_left
    batch[:, 0, top : top + window.inner_rows, left : left + window.inner_cols] = resampled
    return batch


def crop_window(logits: FloatArray, window: Window) -> FloatArray:
    """The model-grid pixels (no padding) of ``(n, classes, h, w)`` output over ``window``."""
    top, left = window.inner_top, window.inner_left
    return np.ascontiguousarray(logits[:, :, top : top + window.inner_rows, left : left + window.inner_cols])
