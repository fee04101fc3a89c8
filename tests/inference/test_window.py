"""Unit tests for model-grid windows and tap-based resampling back (node.inference.preprocess)."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference.preprocess import (
    Box,
    Taps,
    argmax_classes,
    crop_model_grid,
    crop_window,
    frame_box,
    full_window,
    heart_window,
    interpolated_argmax,
    linear_resample_matrix,
    plan_geometry,
    plan_window,
    resample,
    to_model_grid,
    window_to_model_grid,
)
from tests.inference.test_preprocess import SPEC

#: (rows, cols, pixel spacing): square, non-square anisotropic, and a grid smaller than the model's.
GRIDS = [(256, 256, (1.367188, 1.367188)), (192, 156, (1.5, 1.25)), (70, 90, (2.6, 2.2))]


def _smooth_scores(frames: int, classes: int, rows: int, cols: int, seed: int) -> np.ndarray:
    """Smooth random class scores, so that classes form regions with boundaries between them."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 3.0, (frames, classes, rows // 8 + 2, cols // 8 + 2)).astype(np.float32)
    up_rows = linear_resample_matrix(coarse.shape[2], rows, 8.0, 1.0)
    up_cols = linear_resample_matrix(coarse.shape[3], cols, 8.0, 1.0)
    return resample(coarse, up_rows, up_cols)


@pytest.mark.parametrize(
    ("n_in", "n_out", "in_spacing", "out_spacing"),
    [(175, 256, 2.0, 1.367), (40, 40, 1.0, 1.0), (90, 33, 0.9, 1.9)],
)
def test_taps_hold_every_weight_of_the_matrix(
    n_in: int, n_out: int, in_spacing: float, out_spacing: float
) -> None:
    """The two taps per row rebuild the interpolation matrix exactly."""
    matrix = linear_resample_matrix(n_in, n_out, in_spacing, out_spacing)
    taps = Taps.of(matrix)
    rebuilt = np.zeros_like(matrix)
    outputs = np.arange(n_out)
    np.add.at(rebuilt, (outputs, taps.first), taps.first_weight)
    np.add.at(rebuilt, (outputs, taps.second), taps.second_weight)
    np.testing.assert_array_equal(rebuilt, matrix)


def test_taps_refuse_a_matrix_that_is_not_linear_interpolation() -> None:
    """A row with three non-zero weights is not a two-tap interpolation."""
    with pytest.raises(ValueError, match="two non-zero weights"):
        Taps.of(np.full((2, 3), 1.0 / 3.0, dtype=np.float32))


@pytest.mark.parametrize(("rows", "cols", "spacing"), GRIDS)
def test_interpolated_argmax_equals_argmax_of_resampled_scores(
    rows: int, cols: int, spacing: tuple[float, float]
) -> None:
    """Labels from interpolating only the boundary pixels equal those of resampling every pixel."""
    geometry = plan_geometry(rows, cols, spacing, SPEC)
    scores = _smooth_scores(3, 4, geometry.model_rows, geometry.model_cols, seed=rows)
    expected = argmax_classes(resample(scores, geometry.from_model_rows, geometry.from_model_cols))
    window = full_window(geometry)
    labels = interpolated_argmax(scores, window.from_model_rows, window.from_model_cols)
    assert int((expected != expected[:, :1, :1]).sum()) > 0  # there are boundaries to interpolate
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(("rows", "cols", "spacing"), GRIDS)
def test_full_window_is_the_whole_grid(rows: int, cols: int, spacing: tuple[float, float]) -> None:
    """The full window reads and writes the whole frame and gives the whole padded model grid."""
    geometry = plan_geometry(rows, cols, spacing, SPEC)
    window = full_window(geometry)
    assert (window.target_rows, window.target_cols) == (slice(0, rows), slice(0, cols))
    assert (window.source_rows, window.source_cols) == (slice(0, rows), slice(0, cols))
    frames = np.random.default_rng(1).random((2, rows, cols), dtype=np.float32)
    np.testing.assert_array_equal(
        window_to_model_grid(frames, window, -1.0), to_model_grid(frames, geometry, -1.0)
    )
    logits = np.random.default_rng(2).random(
        (2, 4, geometry.padded_rows, geometry.padded_cols), dtype=np.float32
    )
    np.testing.assert_array_equal(crop_window(logits, window), crop_model_grid(logits, geometry))


@pytest.mark.parametrize(("rows", "cols", "spacing"), GRIDS[:2])
def test_window_resamples_its_region_as_the_whole_grid_does(
    rows: int, cols: int, spacing: tuple[float, float]
) -> None:
    """Through a window, the model grid and the labels of the region it decides equal the whole grid's.

    Given the same network output over the window, the labels it writes are those of the whole grid
    there: the sliced interpolation leaves out only zero weights.
    """
    geometry = plan_geometry(rows, cols, spacing, SPEC)
    window = plan_window(geometry, 16, 32, 64, 80)
    frames = np.random.default_rng(3).random((2, rows, cols), dtype=np.float32)
    whole = to_model_grid(frames, geometry, SPEC.pad_value)
    np.testing.assert_allclose(
        window_to_model_grid(frames, window, SPEC.pad_value), whole[:, :, 16:80, 32:112], atol=1e-6
    )
    scores = _smooth_scores(2, 4, geometry.padded_rows, geometry.padded_cols, seed=4)
    whole_scores = crop_model_grid(scores, geometry)
    expected = argmax_classes(resample(whole_scores, geometry.from_model_rows, geometry.from_model_cols))
    labels = interpolated_argmax(
        crop_window(np.ascontiguousarray(scores[:, :, 16:80, 32:112]), window),
        window.from_model_rows,
        window.from_model_cols,
    )
    assert labels.shape[1:] == (
        window.target_rows.stop - window.target_rows.start,
        window.target_cols.stop - window.target_cols.start,
    )
    np.testing.assert_array_equal(labels, expected[:, window.target_rows, window.target_cols])


def test_heart_window_snaps_to_the_size_multiple_within_the_grid() -> None:
    """The window holds the box plus the margin, on multiples of 16, clamped to the padded grid."""
    spacing = (1.367188, 1.367188)
    geometry = plan_geometry(256, 256, spacing, SPEC)
    box = Box(top=109, left=100, bottom=164, right=158)
    window = heart_window(geometry, box, spacing, SPEC, margin=20)
    scale = spacing[0] / SPEC.spacing_mm
    for start, size in ((window.top, window.height), (window.left, window.width)):
        assert start % 16 == 0 and size % 16 == 0
    assert window.top <= box.top * scale - 20 and window.top + window.height >= box.bottom * scale + 20
    assert window.left <= box.left * scale - 20 and window.left + window.width >= box.right * scale + 20
    wide = heart_window(geometry, box, spacing, SPEC, margin=500)
    assert (wide.top, wide.left, wide.height, wide.width) == (
        0,
        0,
        geometry.padded_rows,
        geometry.padded_cols,
    )


def test_frame_box_covers_the_mask_in_original_pixels() -> None:
    """Model pixels 10:20 x 5:8 at 2 mm cover original pixels 20:40 x 10:16 at 1 mm; no pixel, no box."""
    mask = np.zeros((50, 50), dtype=bool)
    mask[10:20, 5:8] = True
    assert frame_box(mask, (1.0, 1.0), SPEC) == Box(top=20, left=10, bottom=40, right=16)
    assert frame_box(np.zeros((50, 50), dtype=bool), (1.0, 1.0), SPEC) is None


def test_box_mirrored_left_to_right() -> None:
    """Columns 10:30 of a 100-column frame are columns 70:90 of its mirror image; rows are kept."""
    assert Box(top=5, left=10, bottom=50, right=30).mirrored(100) == Box(top=5, left=70, bottom=50, right=90)
