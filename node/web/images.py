"""Pictures for the study page, as bytes: a DICOM image as PNG, the contoured cine as GIF, the curve as SVG.

Pure functions of arrays and numbers (no files, no index), so each is tested on its own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from html import escape
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset

from node.images.display import boundary, crop_box, grey, tick_step, window

CINE_SIZE_PX: Final = 320
#: Frame duration bounds (ms): browsers treat very short GIF delays as 100 ms.
FRAME_MS_RANGE: Final = (20, 200)
DEFAULT_FRAME_MS: Final = 60
BLOOD_POOL_COLOUR: Final = (255, 215, 0)
MYOCARDIUM_COLOUR: Final = (0, 210, 120)
#: The cine's GIF palette: this many grey levels, then the myocardium and blood-pool colours.
GREY_LEVELS: Final = 254
_PALETTE: Final = [
    *(value for level in range(GREY_LEVELS) for value in (level * 255 // (GREY_LEVELS - 1),) * 3),
    *MYOCARDIUM_COLOUR,
    *BLOOD_POOL_COLOUR,
]


def dataset_png(dataset: Dataset) -> bytes:
    """The first frame of an image dataset (RGB or monochrome) as PNG bytes.

    Monochrome images are windowed by the percentiles of their pixel values; MONOCHROME1 is inverted.
    """
    pixels = np.asarray(dataset.pixel_array)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # RGB (pydicom converts YBR to RGB by default)
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    else:
        shown = grey(pixels, window([pixels]))
        if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            shown = 255 - shown
        image = Image.fromarray(shown, mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def cine_gif(
    frames: Sequence[npt.NDArray[np.float32] | None],
    labels: npt.NDArray[np.uint8],
    *,
    blood_pool: int,
    myocardium: int,
    spacing_mm: tuple[float, float],
    frame_ms: float = DEFAULT_FRAME_MS,
) -> bytes:
    """An endless animated GIF of one slice over all phases with the predicted LV contours.

    Parameters
    ----------
    frames
        Pixels per phase (None where the slice lacks that phase: the phase is left out).
    labels
        ``[phase, row, col]`` label values of the same slice.
    blood_pool, myocardium
        Label values of the LV blood pool (drawn gold) and myocardium (its outer edge, green).
    """
    present = [(phase, frame) for phase, frame in enumerate(frames) if frame is not None]
    if not present:
        raise ValueError("no frame to animate")
    top, left, height, width = crop_box(labels, (blood_pool, myocardium), spacing_mm)
    crops = [
        np.asarray(frame, dtype=np.float64)[top : top + height, left : left + width] for _, frame in present
    ]
    scale = CINE_SIZE_PX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    images: list[Image.Image] = []
    shown = window(crops)
    for (phase, _), crop in zip(present, crops, strict=True):
        levels = np.asarray(
            Image.fromarray(grey(crop, shown), mode="L").resize(size, Image.Resampling.BILINEAR)
        )
        # Palette indices: grey levels 0..GREY_LEVELS-1, then the two contour colours exactly.
        indices = (levels.astype(np.uint16) * (GREY_LEVELS - 1) // 255).astype(np.uint8)
        label = labels[phase, top : top + height, left : left + width]
        upscaled = np.asarray(Image.fromarray(label, mode="L").resize(size, Image.Resampling.NEAREST))
        blood = upscaled == blood_pool
        indices[boundary(blood | (upscaled == myocardium))] = GREY_LEVELS
        indices[boundary(blood)] = GREY_LEVELS + 1
        frame = Image.fromarray(indices, mode="P")
        frame.putpalette(_PALETTE)
        images.append(frame)
    duration = int(np.clip(round(frame_ms), *FRAME_MS_RANGE))
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, disposal=1
    )
    return buffer.getvalue()


def volume_curve_svg(
    curve_ml: Sequence[float],
    ed_phase: int,
    es_phase: int,
    *,
    width: int = 480,
    height: int = 220,
) -> str:
    """An inline SVG of the LV volume over the cardiac cycle, ED and ES marked, axes in phase and mL."""
    values = [float(v) for v in curve_ml]
    if not values:
        return ""
    left, right, top, bottom = 52, 12, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    low = min(0.0, min(values))
    high = max(values) * 1.1 if max(values) > 0 else 1.0
    count = len(values)

    def x(index: float) -> float:
        return left + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    step = tick_step(high - low)
    ticks = [
        tick * step for tick in range(int(low // step), int(high // step) + 1) if low <= tick * step <= high
    ]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="LV volume over the cardiac cycle">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for tick in ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:g}</text>'
        )
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts.append(f'<polyline points="{points}" class="line"/>')
    for phase, name, css in ((ed_phase, "ED", "ed"), (es_phase, "ES", "es")):
        if 0 <= phase < count:
            cx, cy = x(phase), y(values[phase])
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" class="{css}"/>')
            label = f"{name} {values[phase]:.0f} mL"
            parts.append(
                f'<text x="{cx:.1f}" y="{cy - 9:.1f}" class="mark {css}" text-anchor="middle">{label}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" class="axis" text-anchor="middle">'
        f"cardiac phase (1-{count})</text>"
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.0f})">{escape("volume (mL)")}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
