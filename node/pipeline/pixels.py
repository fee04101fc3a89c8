"""Read a planned stack's pixels from its files, any transfer syntax the receiver accepts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.pixels.processing import apply_modality_lut

from node.errors import NodeError
from node.pipeline.stacks import StackPlan


class UnreadablePixels(NodeError):
    """A file of a stack cannot be decoded (its transfer syntax or its data)."""


@dataclass(frozen=True)
class StackPixels:
    """``frames[slice, phase]`` on one grid; ``present`` marks cells that have an image."""

    frames: npt.NDArray[np.float32]
    present: npt.NDArray[np.bool_]


def read_frame(path: Path) -> npt.NDArray[np.float32]:
    """Decode one single-frame image with its Modality LUT (rescale slope/intercept) applied."""
    try:
        dataset = pydicom.dcmread(path)
        pixels = apply_modality_lut(dataset.pixel_array, dataset)
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        raise UnreadablePixels(f"cannot decode pixel data: {type(error).__name__}") from None
    return np.asarray(pixels, dtype=np.float32)


def load_pixels(plan: StackPlan, root: Path) -> StackPixels:
    """Every cell of the plan's grid, zeros where a cell is missing.

    Parameters
    ----------
    root
        Directory the plan's relative paths are resolved against (absolute paths stay as they are).
    """
    frames = np.zeros((plan.slices, plan.phases, plan.rows, plan.columns), dtype=np.float32)
    present = np.zeros((plan.slices, plan.phases), dtype=bool)
    for slice_index, row in enumerate(plan.grid):
        for phase, cell in enumerate(row):
            if cell is None:
                continue
            frame = read_frame(root / cell.path)
            if frame.shape != (plan.rows, plan.columns):
                raise UnreadablePixels("decoded frame size differs from Rows x Columns")
            frames[slice_index, phase] = frame
            present[slice_index, phase] = True
    return StackPixels(frames=frames, present=present)
