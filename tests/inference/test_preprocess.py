"""Unit tests for card-driven preprocessing (node.inference.preprocess)."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference.card import InputSpec, Normalisation
from node.inference.preprocess import (
    from_model_grid,
    linear_resample_matrix,
    normalise,
    plan_geometry,
    to_model_grid,
)

NORMALISATION = Normalisation(low_percentile=1.0, high_percentile=99.0, clip_min=0.0, clip_max=1.0)
SPEC = InputSpec(
    name="image",
    channels=("MR magnitude",),
    spacing_mm=2.0,
    size_multiple=16,
    pad_value=0.0,
    normalisation=NORMALISATION,
)


@pytest.mark.parametrize(
    ("n_in", "n_out", "in_spacing", "out_spacing"),
    [(256, 175, 1.367, 2.0), (175, 256, 2.0, 1.367), (40, 40, 1.0, 1.0), (33, 70, 1.9, 0.9)],
)
def test_resample_matrix_rows_sum_to_one(
    n_in: int, n_out: int, in_spacing: float, out_spacing: float
) -> None:
    """Every row of the interpolation matrix is a convex combination: non-negative weights summing to 1."""
    matrix = linear_resample_matrix(n_in, n_out, in_spacing, out_spacing)
    assert matrix.shape == (n_out, n_in)
    assert matrix.dtype == np.float32
    assert (matrix >= 0).all()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("n_in", "n_out", "in_spacing", "out_spacing"), [(256, 175, 1.367, 2.0), (60, 90, 1.5, 1.0)]
)
def test_resample_matrix_reproduces_linear_ramp(
    n_in: int, n_out: int, in_spacing: float, out_spacing: float
) -> None:
    """A linear ramp is resampled exactly: output j equals the ramp at its centre, clamped to the input."""
    ramp = 3.0 * np.arange(n_in, dtype=np.float64) - 7.0
    matrix = linear_resample_matrix(n_in, n_out, in_spacing, out_spacing)
    centres = (np.arange(n_out) + 0.5) * out_spacing / in_spacing - 0.5
    expected = 3.0 * np.clip(centres, 0.0, n_in - 1.0) - 7.0
    np.testing.assert_allclose(matrix.astype(np.float64) @ ramp, expected, atol=1e-3)


def test_identity_spacing_gives_identity_matrix() -> None:
    """Resampling to the same size and spacing is the identity."""
    np.testing.assert_allclose(linear_resample_matrix(17, 17, 1.3, 1.3), np.eye(17), atol=1e-6)


def test_plan_geometry_square_frame() -> None:
    """256x256 at 1.367 mm becomes a 175x175 model grid at 2 mm, padded to 176 (multiple of 16)."""
    geometry = plan_geometry(256, 256, (1.367, 1.367), SPEC)
    assert (geometry.rows, geometry.cols) == (256, 256)
    assert (geometry.model_rows, geometry.model_cols) == (175, 175)
    assert (geometry.padded_rows, geometry.padded_cols) == (176, 176)
    assert (geometry.pad_top, geometry.pad_left) == (0, 0)
    assert geometry.to_model_rows.shape == (175, 256)
    assert geometry.to_model_cols.shape == (175, 256)
    assert geometry.from_model_rows.shape == (256, 175)
    assert geometry.from_model_cols.shape == (256, 175)


def test_plan_geometry_non_square_anisotropic_frame() -> None:
    """Rows and columns are planned independently from their own spacing, with centred padding."""
    geometry = plan_geometry(192, 160, (1.5, 1.25), SPEC)
    assert (geometry.model_rows, geometry.model_cols) == (144, 100)
    assert (geometry.padded_rows, geometry.padded_cols) == (144, 112)
    assert (geometry.pad_top, geometry.pad_left) == (0, 6)
    assert geometry.padded_rows % SPEC.size_multiple == 0
    assert geometry.padded_cols % SPEC.size_multiple == 0


def _smooth_frames(count: int, rows: int, cols: int) -> np.ndarray:
    r = np.linspace(0.0, 1.0, rows)[:, None]
    c = np.linspace(0.0, 1.0, cols)[None, :]
    frames = [
        0.5 + 0.4 * np.sin(2 * np.pi * (r * (k + 1) / 2 + 0.3)) * np.cos(2 * np.pi * (c * (k + 1) / 3 + 0.1))
        for k in range(count)
    ]
    return np.stack(frames).astype(np.float32)


def test_model_grid_round_trip_is_close_for_smooth_image() -> None:
    """to_model_grid then from_model_grid returns a smooth non-square stack to its grid nearly unchanged."""
    frames = _smooth_frames(3, 192, 156)
    geometry = plan_geometry(192, 156, (1.25, 1.25), SPEC)
    batch = to_model_grid(frames, geometry, pad_value=-1.0)
    assert batch.shape == (3, 1, geometry.padded_rows, geometry.padded_cols)
    assert batch.dtype == np.float32
    back = from_model_grid(batch, geometry)
    assert back.shape == (3, 1, 192, 156)
    np.testing.assert_allclose(back[:, 0], frames, atol=0.01)


def test_to_model_grid_fills_padding_with_pad_value() -> None:
    """Pixels outside the resampled frame carry the card's pad value; the frame sits centred."""
    frames = np.full((2, 100, 60), 0.5, np.float32)
    geometry = plan_geometry(100, 60, (1.0, 1.0), SPEC)
    batch = to_model_grid(frames, geometry, pad_value=-3.0)
    top, left = geometry.pad_top, geometry.pad_left
    inside = np.zeros(batch.shape, bool)
    inside[:, :, top : top + geometry.model_rows, left : left + geometry.model_cols] = True
    assert (batch[~inside] == -3.0).all()
    np.testing.assert_allclose(batch[inside], 0.5, atol=1e-6)


def test_from_model_grid_keeps_batch_and_class_axes() -> None:
    """Logits (n, classes, H, W) come back as (n, classes, rows, cols) on a non-square original grid."""
    geometry = plan_geometry(120, 90, (1.6, 1.6), SPEC)
    logits = np.random.default_rng(0).normal(size=(5, 4, geometry.padded_rows, geometry.padded_cols))
    out = from_model_grid(logits.astype(np.float32), geometry)
    assert out.shape == (5, 4, 120, 90)


def test_normalise_maps_stack_percentiles_to_unit_range_and_clips() -> None:
    """The stack's 1st and 99th percentiles map to 0 and 1; values beyond are clipped."""
    stack = np.arange(10000, dtype=np.uint16).reshape(4, 50, 50)
    low, high = np.percentile(stack.astype(np.float32), [1.0, 99.0])
    out = normalise(stack, NORMALISATION)
    assert out.shape == stack.shape
    assert out.dtype == np.float32
    assert out.min() == 0.0
    assert out.max() == 1.0
    flat = out.ravel()
    values = stack.ravel().astype(np.float64)
    middle = (values > low) & (values < high)
    np.testing.assert_allclose(flat[middle], (values[middle] - low) / (high - low), atol=1e-5)
    assert (flat[values <= low] == 0.0).all()
    assert (flat[values >= high] == 1.0).all()


def test_normalise_uses_the_whole_stack_not_each_frame() -> None:
    """A dim frame stays dim: percentiles come from every frame of the stack together."""
    rng = np.random.default_rng(1)
    bright = rng.uniform(0, 1000, size=(3, 32, 32))
    dim = rng.uniform(0, 100, size=(1, 32, 32))
    out = normalise(np.concatenate([bright, dim]), NORMALISATION)
    assert out[3].max() < 0.15
    assert out[:3].max() == 1.0


def test_normalise_constant_stack_does_not_divide_by_zero() -> None:
    """A constant stack normalises to clip_min without NaN or inf."""
    out = normalise(np.full((2, 8, 8), 42.0), NORMALISATION)
    assert np.isfinite(out).all()
    assert (out == 0.0).all()
