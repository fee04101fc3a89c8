"""Training-time augmentation for what a PACS really sends.

Each sample is drawn from a native ACDC frame onto the model grid by one affine resampling: any
in-plane rotation, flips, scale 0.8-1.25 around the nominal spacing, translation and cropping to
varying matrix sizes; then gamma, contrast, a smooth multiplicative bias field and noise.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from models.data import ACDC_NOMINAL_SPACING_MM, BLOOD_POOL


def _centre(label: npt.NDArray[np.uint8], rng: np.random.Generator) -> tuple[float, float]:
    rows, cols = label.shape
    heart = np.argwhere(label == BLOOD_POOL)
    if heart.size == 0:
        heart = np.argwhere(label > 0)
    if heart.size and rng.random() < 0.75:
        row, col = heart.mean(axis=0)
        return float(row + rng.normal(0, 20)), float(col + rng.normal(0, 20))
    return float(rng.uniform(0, rows)), float(rng.uniform(0, cols))


def sample(
    image: npt.NDArray[np.float32],
    label: npt.NDArray[np.uint8],
    size: int,
    spacing_mm: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one augmented ``(1, size, size)`` image and ``(size, size)`` label from a native frame."""
    rows, cols = image.shape
    scale = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    step = spacing_mm / (ACDC_NOMINAL_SPACING_MM * scale)  # native pixels per output pixel
    angle = rng.uniform(0, 2 * math.pi)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    centre_row, centre_col = _centre(label, rng)
    offsets = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * step
    grid_v, grid_u = torch.meshgrid(offsets, offsets * flip, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    native_col = centre_col + cos * grid_u - sin * grid_v
    native_row = centre_row + sin * grid_u + cos * grid_v
    grid = torch.stack([(2 * native_col + 1) / cols - 1, (2 * native_row + 1) / rows - 1], dim=-1)
    grid = grid.unsqueeze(0)
    source = torch.from_numpy(image)[None, None]
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = torch.from_numpy(label.astype(np.float32))[None, None]
    warped_label = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return _intensity(warped[0], size, rng), warped_label[0, 0].long()


def _intensity(image: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    image = image.clamp(0, 1) ** math.exp(rng.uniform(math.log(0.7), math.log(1.5)))
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.7:
        coarse = torch.from_numpy(rng.normal(0, 0.25, (1, 1, 4, 4)).astype(np.float32))
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
        image = image * torch.exp(field)
    if rng.random() < 0.3:
        image = F.avg_pool2d(image[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    image = image + torch.randn_like(image) * rng.uniform(0, 0.05)
    return image.clamp(0, 1)
