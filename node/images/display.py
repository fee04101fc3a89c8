"""How the node shows MR frames to a person, one way everywhere: the display window, the crop around
the LV, the contour of a label mask and the ticks of a volume axis. The secondary capture
(:mod:`node.reports.render`) and the study page's pictures (:mod:`node.web.images`) both draw with
these, so the picture sent to PACS and the one on the worklist agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

#: Display window of MR frames: these percentiles over all frames shown together map to black and white.
WINDOW_PERCENTILES: Final = (1.0, 99.5)
#: The crop around the LV spans this many times the LV's extent, and at least CROP_MIN_MM.
CROP_EXTENT_FACTOR: Final = 2.2
CROP_MIN_MM: Final = 80.0
#: Steps of a volume axis (mL), the first that gives at most MAX_TICKS ticks.
VALUE_TICK_ML: Final = (5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 250.0, 500.0)
MAX_TICKS: Final = 6


def window(frames: Sequence[npt.NDArray[np.floating]]) -> tuple[float, float]:
    """(low, high) display window of frames shown together (:data:`WINDOW_PERCENTILES`)."""
    values = np.concatenate([np.asarray(frame, dtype=np.float64).ravel() for frame in frames])
    low, high = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return low, max(high, low + 1.0)


def grey(frame: npt.NDArray[np.floating], shown: tuple[float, float]) -> npt.NDArray[np.uint8]:
    """A frame as 8-bit grey through the window ``shown``."""
    low, high = shown
    scaled = (np.asarray(frame, dtype=np.float64) - low) / (high - low) * 255.0
    result: npt.NDArray[np.uint8] = np.clip(scaled, 0, 255).astype(np.uint8)
    return result


def boundary(mask: npt.NDArray[np.bool_], width: int = 1) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with a 4-neighbour outside it, thickened inwards and outwards to ``width``."""
    padded = np.pad(mask, 1)
    interior = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    edge: npt.NDArray[np.bool_] = mask & ~interior
    for _ in range(width - 1):
        grown = np.pad(edge, 1)
        edge = edge | grown[:-2, 1:-1] | grown[2:, 1:-1] | grown[1:-1, :-2] | grown[1:-1, 2:]
    return edge


def crop_box(
    labels: npt.NDArray[np.integer], classes: Sequence[int], spacing_mm: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, height, width): a physically square crop centred on the labelled LV of every frame
    of ``labels`` (``(..., rows, cols)``); the whole frame where there is no LV."""
    rows, columns = labels.shape[-2:]
    lv = np.isin(labels, list(classes)).reshape(-1, rows, columns).any(axis=0)
    if not lv.any():
        return 0, 0, rows, columns
    found_rows, found_columns = np.nonzero(lv)
    centre = ((found_rows.min() + found_rows.max()) / 2, (found_columns.min() + found_columns.max()) / 2)
    extent_mm = max(
        (found_rows.max() - found_rows.min() + 1) * spacing_mm[0],
        (found_columns.max() - found_columns.min() + 1) * spacing_mm[1],
    )
    side_mm = max(extent_mm * CROP_EXTENT_FACTOR, CROP_MIN_MM)
    height = min(rows, max(1, round(side_mm / spacing_mm[0])))
    width = min(columns, max(1, round(side_mm / spacing_mm[1])))
    top = int(np.clip(round(centre[0] - height / 2), 0, rows - height))
    left = int(np.clip(round(centre[1] - width / 2), 0, columns - width))
    return top, left, height, width


def tick_step(span: float) -> float:
    """The step of a volume axis spanning ``span`` mL (:data:`VALUE_TICK_ML`)."""
    for step in VALUE_TICK_ML:
        if span / step <= MAX_TICKS:
            return step
    return VALUE_TICK_ML[-1] * math.ceil(span / (VALUE_TICK_ML[-1] * MAX_TICKS))
