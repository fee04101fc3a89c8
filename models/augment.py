"""Training-time augmentation for what a PACS really sends, from scanners the training data lacks.

Each sample is drawn from a native ACDC frame, at its real pixel spacing, onto the model grid by one
affine resampling: any in-plane rotation, flips, anatomical scale 0.85-1.18, anisotropic stretch,
translation and cropping to varying matrix sizes. Then, in the spirit of the multi-vendor challenge
winners (M&Ms 2020: nnU-Net-style heavy augmentation; Campello et al., IEEE TMI 2021; Full et al.
2020), acquisition and intensity transforms wider than 1.0.0's: a thicker slice (partial volume with
the neighbouring slice), coarser in-plane acquisition (down- then up-sampling, 1.0-2.0 mm-like
pixels on the 2 mm grid and below), blur, ghosting and motion copies, a percentile/window shift,
gamma, contrast and brightness, a smooth coil-bias field, Rician noise and occasional sharpening.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from models.data import BLOOD_POOL


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
    neighbour: npt.NDArray[np.float32],
    native_spacing: tuple[float, float],
    size: int,
    spacing_mm: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one augmented ``(1, size, size)`` image and ``(size, size)`` label from a native frame.

    ``neighbour`` is an adjacent slice of the same volume (blended in to simulate a thicker slice);
    ``native_spacing`` is the frame's (row, column) spacing in mm.
    """
    if rng.random() < 0.25:
        weight = rng.uniform(0.05, 0.3)
        image = ((1 - weight) * image + weight * neighbour).astype(np.float32)
    rows, cols = image.shape
    scale = math.exp(rng.uniform(math.log(0.85), math.log(1.18)))
    stretch = math.exp(rng.uniform(-0.08, 0.08))
    angle = rng.uniform(0, 2 * math.pi)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    centre_row, centre_col = _centre(label, rng)
    offsets = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * (spacing_mm / scale)
    grid_v, grid_u = torch.meshgrid(offsets / stretch, offsets * flip * stretch, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    native_col = centre_col + (cos * grid_u - sin * grid_v) / native_spacing[1]
    native_row = centre_row + (sin * grid_u + cos * grid_v) / native_spacing[0]
    grid = torch.stack([(2 * native_col + 1) / cols - 1, (2 * native_row + 1) / rows - 1], dim=-1)
    grid = grid.unsqueeze(0)
    source = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = torch.from_numpy(label.astype(np.float32))[None, None]
    warped_label = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return _intensity(_acquisition(warped[0], size, rng), size, rng), warped_label[0, 0].long()


def _acquisition(image: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Resolution, blur, ghosting and motion: how another scanner's acquisition looks."""
    if rng.random() < 0.35:
        factor = rng.uniform(1.2, 2.2)
        low = max(8, round(size / factor))
        coarse = F.interpolate(image[None], size=(low, low), mode="area")
        image = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
    if rng.random() < 0.2:
        sigma = rng.uniform(0.5, 1.2)
        radius = 3
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        padded = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
        image = F.conv2d(padded, kernel.view(1, 1, 1, -1))
        image = F.conv2d(image, kernel.view(1, 1, -1, 1))[0]
    if rng.random() < 0.15:
        axis = 1 + int(rng.integers(0, 2))
        shift = size // int(rng.integers(2, 5))
        image = image + rng.uniform(0.05, 0.25) * torch.roll(image, shift, dims=axis)
    if rng.random() < 0.1:
        axis = 1 + int(rng.integers(0, 2))
        shift = int(rng.integers(1, 4))
        weight = rng.uniform(0.2, 0.5)
        image = (1 - weight) * image + weight * torch.roll(image, shift, dims=axis)
    return image


def _intensity(image: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Window, gamma, contrast, coil bias, Rician noise and sharpening, clipped to the model's [0, 1]."""
    if rng.random() < 0.5:
        low, high = rng.uniform(-0.1, 0.1), rng.uniform(0.7, 1.2)
        image = (image - low) / (high - low)
    image = image.clamp(0, 1) ** math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.65, 1.5) + mean + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.8:
        grid = int(rng.integers(2, 6))
        coarse = torch.from_numpy(
            rng.normal(0, rng.uniform(0.1, 0.45), (1, 1, grid, grid)).astype(np.float32)
        )
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
        image = image * torch.exp(field)
    if rng.random() < 0.15:
        smooth = F.avg_pool2d(image[None], 3, stride=1, padding=1, count_include_pad=False)[0]
        image = image + rng.uniform(0.3, 1.0) * (image - smooth)
    sigma = rng.uniform(0, 0.08)
    if sigma > 0.005:
        real = image.clamp(min=0) + torch.randn_like(image) * sigma
        imaginary = torch.randn_like(image) * sigma
        image = torch.sqrt(real**2 + imaginary**2)
    return image.clamp(0, 1)
