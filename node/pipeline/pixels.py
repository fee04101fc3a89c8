"""Read a planned stack's pixels from its files (:mod:`node.images.pixels` decodes them).

A grid cell is a single-frame instance or one frame of a multi-frame instance
(:class:`~node.images.frames.SpooledFrame`). A multi-frame file is opened once and only the frames
the stack uses are decoded, one at a time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.images.frames import SpooledFrame
from node.images.pixels import UnreadablePixels, decode_frames, read_frame
from node.pipeline.stacks import StackPlan


@dataclass(frozen=True)
class StackPixels:
    """The decoded images of a stack's present cells, and where they sit on its grid.

    Attributes
    ----------
    frames
        ``(n, rows, cols)``: the image of every present cell, slice by slice and phase by phase, which
        is the order of ``present``'s true cells (``volume[present] = frames`` puts them in place).
        Only present cells are held, so a stack with missing cells costs no memory for them.
    present
        ``(slices, phases)``: whether the cell has an image.
    """

    frames: npt.NDArray[np.float32]
    present: npt.NDArray[np.bool_]


def load_pixels(plan: StackPlan, root: Path) -> StackPixels:
    """The image of every present cell of the plan's grid, read file by file.

    Parameters
    ----------
    root
        Directory the plan's relative paths are resolved against (absolute paths stay as they are).

    Raises
    ------
    UnreadablePixels
        A file cannot be decoded, an image's size differs from the plan's Rows x Columns, or it
        holds values that are not finite numbers.
    """
    present = np.array([[cell is not None for cell in row] for row in plan.grid], dtype=bool)
    cells = [cell for row in plan.grid for cell in row if cell is not None]
    frames = np.empty((len(cells), plan.rows, plan.columns), dtype=np.float32)

    def place(position: int, frame: npt.NDArray[np.float32]) -> None:
        if frame.shape != (plan.rows, plan.columns):
            raise UnreadablePixels("decoded frame size differs from Rows x Columns")
        if not np.isfinite(frame).all():  # float pixel data: one NaN would blank the whole stack
            raise UnreadablePixels("pixel data holds values that are not finite numbers")
        frames[position] = frame

    multi_frame: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for position, cell in enumerate(cells):
        if isinstance(cell, SpooledFrame):
            multi_frame[cell.path].append((position, cell.frame_number))
        else:
            place(position, read_frame(root / cell.path))
    for path, wanted in multi_frame.items():
        for position, frame in decode_frames(root / path, wanted):
            place(position, frame)
    return StackPixels(frames=frames, present=present.reshape(plan.slices, plan.phases))
