"""Draw the one-page summary a radiologist reads in a PACS viewer (the secondary capture's pixels).

The page shows the mid-ventricular ED and ES frames with the predicted LV blood-pool and myocardium
contours, the LV volume curve over the cardiac cycle with ED and ES marked, the measurements with
units, the QC flags, the confidence, the model, and a banner with the sign-off status. No patient
identifier is drawn. The result is an RGB ``uint8`` array (rows, columns, 3), legible at 1024 x 768.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from node.dicom.names import readable_name
from node.domain import QcStatus, StackResult
from node.images.display import boundary, crop_box, grey, tick_step, window
from node.reports.codes import ReviewStatus, qc_flag_code
from node.reports.labels import LabelClasses

WIDTH: Final = 1024
HEIGHT: Final = 768
MARGIN: Final = 16
BANNER_HEIGHT: Final = 64
PANEL_SIZE: Final = 320
PANEL_TOP: Final = 138
CAPTION_TOP: Final = 106
CURVE_TOP: Final = 492
COLUMN_LEFT: Final = 2 * PANEL_SIZE + 3 * MARGIN + 8
#: Contours on the picture are this thick (the window, crop and ticks: :mod:`node.images.display`).
CONTOUR_WIDTH_PX: Final = 2

BACKGROUND: Final = (18, 18, 18)
TEXT: Final = (235, 235, 235)
DIM_TEXT: Final = (160, 160, 160)
BLOOD_POOL_COLOUR: Final = (255, 215, 0)
MYOCARDIUM_COLOUR: Final = (0, 210, 120)
CURVE_COLOUR: Final = (110, 180, 255)
ED_COLOUR: Final = (255, 120, 80)
ES_COLOUR: Final = (200, 120, 255)
AXIS_COLOUR: Final = (120, 120, 120)
#: The QC status "check": amber, readable on the dark background.
CHECK_COLOUR: Final = (255, 176, 0)

BANNER_FONT: Final = 34
TITLE_FONT: Final = 22
VALUE_FONT: Final = 28
BODY_FONT: Final = 19
SMALL_FONT: Final = 16
QC_WRAP_CHARS: Final = 30
#: Characters per line of the basal rule under the model's name (the small font fits about 40).
RULE_WRAP_CHARS: Final = 38
#: Height of a line of the small font in the values column, and the gap above the model's name.
LINE_HEIGHT: Final = 21
FOOTER_GAP: Final = 12

UNVERIFIED_BANNER: Final = "AI RESULT - NOT VERIFIED BY A RADIOLOGIST"


class BannerKind(StrEnum):
    """Sign-off state the banner shows; it picks the banner's colour."""

    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    AMENDED = "amended"
    REJECTED = "rejected"


BANNER_COLOURS: Final = {
    BannerKind.UNVERIFIED: (200, 30, 30),
    BannerKind.VERIFIED: (20, 130, 60),
    BannerKind.AMENDED: (20, 110, 150),
    BannerKind.REJECTED: (110, 20, 20),
}
_REVIEW_BANNERS: Final = {
    ReviewStatus.SIGNED_OFF: (BannerKind.VERIFIED, "VERIFIED BY {name} {date}"),
    ReviewStatus.AMENDED: (BannerKind.AMENDED, "AMENDED AND VERIFIED BY {name} {date}"),
    ReviewStatus.REJECTED: (BannerKind.REJECTED, "AI RESULT REJECTED BY {name} {date}"),
}


@dataclass(frozen=True)
class Banner:
    """The sign-off line at the top of the page."""

    text: str
    kind: BannerKind

    @classmethod
    def unverified(cls) -> Banner:
        """The draft's banner: "AI RESULT - NOT VERIFIED BY A RADIOLOGIST"."""
        return cls(UNVERIFIED_BANNER, BannerKind.UNVERIFIED)

    @classmethod
    def verified(cls, observer_name: str, verified_at: datetime, review: ReviewStatus) -> Banner:
        """ "VERIFIED BY <name> <date>" (or AMENDED / REJECTED); ``observer_name`` is a PN value."""
        if review == ReviewStatus.PENDING:
            return cls.unverified()
        kind, template = _REVIEW_BANNERS[review]
        readable = readable_name(observer_name) or observer_name
        return cls(template.format(name=readable.upper(), date=verified_at.date().isoformat()), kind)


@dataclass(frozen=True)
class Frame:
    """One displayed frame: its pixels (modality values) and the predicted labels on the same grid."""

    pixels: npt.NDArray[np.floating] | npt.NDArray[np.integer]
    labels: npt.NDArray[np.uint8]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _panel(
    frame: Frame, box: tuple[int, int, int, int], shown: tuple[float, float], classes: LabelClasses
) -> Image.Image:
    top, left, height, width = box
    pixels = np.asarray(frame.pixels, dtype=np.float64)[top : top + height, left : left + width]
    labels = frame.labels[top : top + height, left : left + width]
    image = Image.fromarray(grey(pixels, shown), mode="L").resize(
        (PANEL_SIZE, PANEL_SIZE), Image.Resampling.BILINEAR
    )
    rgb = np.asarray(image.convert("RGB")).copy()
    label_image = Image.fromarray(labels, mode="L").resize((PANEL_SIZE, PANEL_SIZE), Image.Resampling.NEAREST)
    upscaled = np.asarray(label_image)
    blood = upscaled == classes.blood_pool
    myocardium = (upscaled == classes.myocardium) | blood
    rgb[boundary(myocardium, CONTOUR_WIDTH_PX)] = MYOCARDIUM_COLOUR
    rgb[boundary(blood, CONTOUR_WIDTH_PX)] = BLOOD_POOL_COLOUR
    return Image.fromarray(rgb, mode="RGB")


def _curve(draw: ImageDraw.ImageDraw, result: StackResult, box: tuple[int, int, int, int]) -> None:
    """The LV volume curve over the cardiac cycle, ED and ES marked, axes in phases and mL."""
    left, top, right, bottom = box
    small, body = _font(SMALL_FONT), _font(BODY_FONT)
    draw.text((left, top), "LV blood-pool volume (mL) by cardiac phase", fill=TEXT, font=body)
    plot_left, plot_top, plot_right, plot_bottom = left + 56, top + 30, right - 10, bottom - 28
    curve = np.asarray(result.volume_curve_ml, dtype=np.float64)
    step = tick_step(max(float(curve.max() - curve.min()), 1.0))
    low = np.floor(curve.min() / step) * step - step
    high = np.ceil(curve.max() / step) * step
    phases = max(len(curve) - 1, 1)

    def point(phase: float, volume: float) -> tuple[float, float]:
        x = plot_left + (plot_right - plot_left) * phase / phases
        y = plot_bottom - (plot_bottom - plot_top) * (volume - low) / (high - low)
        return x, y

    draw.line([(plot_left, plot_top), (plot_left, plot_bottom), (plot_right, plot_bottom)], fill=AXIS_COLOUR)
    for value in np.arange(low, high + step / 2, step):
        _, y = point(0, value)
        draw.line([(plot_left - 5, y), (plot_left, y)], fill=AXIS_COLOUR)
        draw.text((plot_left - 8, y), f"{value:.0f}", fill=DIM_TEXT, font=small, anchor="rm")
    for phase in range(len(curve)):
        x, _ = point(phase, low)
        draw.line([(x, plot_bottom), (x, plot_bottom + 4)], fill=AXIS_COLOUR)
        if phase % 2 == 0 or phase == len(curve) - 1:
            draw.text((x, plot_bottom + 6), str(phase + 1), fill=DIM_TEXT, font=small, anchor="ma")
    draw.line([point(p, v) for p, v in enumerate(curve)], fill=CURVE_COLOUR, width=3, joint="curve")
    for phase, colour, label in ((result.ed_phase, ED_COLOUR, "ED"), (result.es_phase, ES_COLOUR, "ES")):
        x, y = point(phase, curve[phase])
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=colour, width=3)
        vertical = "b" if label == "ED" else "t"
        right_half = phase > phases / 2
        text_x = x - 10 if right_half else x + 10
        text_y = y - 10 if label == "ED" else y + 10
        anchor = ("r" if right_half else "l") + vertical
        draw.text((text_x, text_y), f"{label} {curve[phase]:.0f} mL", fill=colour, font=small, anchor=anchor)


def _values_column(draw: ImageDraw.ImageDraw, result: StackResult, mid_slice: int, left: int) -> None:
    """Measurements, confidence, QC flags and the model, top to bottom."""
    title, value, body, small = _font(TITLE_FONT), _font(VALUE_FONT), _font(BODY_FONT), _font(SMALL_FONT)
    y = CAPTION_TOP
    draw.text((left, y), "Left ventricle", fill=TEXT, font=title)
    y += 36
    rows = (
        ("EDV", f"{result.edv_ml:.1f} mL"),
        ("ESV", f"{result.esv_ml:.1f} mL"),
        ("EF", f"{result.ef_pct:.1f} %"),
        ("SV", f"{result.sv_ml:.1f} mL"),
        ("LV mass", f"{result.lv_mass_g:.1f} g"),
    )
    for name, text in rows:
        draw.text((left, y), name, fill=DIM_TEXT, font=value)
        draw.text((WIDTH - MARGIN, y), text, fill=TEXT, font=value, anchor="ra")
        y += 38
    y += 8
    draw.text((left, y), "Confidence", fill=DIM_TEXT, font=body)
    draw.text((WIDTH - MARGIN, y), f"{result.confidence:.2f}", fill=TEXT, font=body, anchor="ra")
    y += 32
    draw.text((left, y), "Quality control", fill=DIM_TEXT, font=body)
    check = result.qc_status == QcStatus.CHECK
    draw.text(
        (WIDTH - MARGIN, y),
        "CHECK" if check else "ok",
        fill=CHECK_COLOUR if check else TEXT,
        font=body,
        anchor="ra",
    )
    y += 26
    rule = result.basal_rule.counted if result.basal_rule is not None else None
    footer = [
        f"Model {result.model.name} {result.model.version}",
        *(textwrap.wrap(rule[0].upper() + rule[1:], RULE_WRAP_CHARS) if rule else []),
        f"Slice {mid_slice + 1} of {result.slices} (mid-ventricular)",
        f"{result.phases} phases, slice spacing {result.slice_spacing_mm:.1f} mm",
    ]
    room = (HEIGHT - MARGIN - y - FOOTER_GAP - LINE_HEIGHT * len(footer)) // LINE_HEIGHT
    flags = [qc_flag_code(flag).meaning for flag in result.qc_flags] or ["No flag raised"]
    for number, line in _flag_lines(flags, room):
        draw.text(
            (left + (0 if number == 0 else 14), y),
            ("- " if number == 0 else "") + line,
            fill=TEXT,
            font=small,
        )
        y += LINE_HEIGHT
    y += FOOTER_GAP
    for line in footer:
        draw.text((left, y), line, fill=DIM_TEXT, font=small)
        y += LINE_HEIGHT


def _flag_lines(flags: list[str], room: int) -> list[tuple[int, str]]:
    """The QC flags' lines (each flag wrapped, with the number of the line within its flag), at most
    ``room`` of them: where they do not all fit, the last line says how many flags are not shown (the
    SR lists every one)."""
    wrapped = [textwrap.wrap(flag, QC_WRAP_CHARS) for flag in flags]
    if sum(len(lines) for lines in wrapped) > room:
        kept: list[list[str]] = []
        for lines in wrapped:
            if sum(len(k) for k in kept) + len(lines) > room - 1:
                break
            kept.append(lines)
        wrapped = [*kept, [f"{len(flags) - len(kept)} more: see the report (SR)"]]
    return [(number, line) for lines in wrapped for number, line in enumerate(lines)]


def render_summary(
    result: StackResult,
    *,
    ed: Frame,
    es: Frame,
    mid_slice: int,
    classes: LabelClasses,
    banner: Banner,
) -> npt.NDArray[np.uint8]:
    """The summary page as an RGB image of :data:`HEIGHT` x :data:`WIDTH` pixels.

    Parameters
    ----------
    result
        The measured stack (numbers, curve, QC, model).
    ed, es
        The mid-ventricular slice at end diastole and end systole, with its labels.
    mid_slice
        Index of that slice (printed as "slice k of n").
    classes
        Label values of the blood pool and myocardium in ``ed.labels`` / ``es.labels``.
    banner
        The sign-off line; see :meth:`Banner.unverified` and :meth:`Banner.verified`.
    """
    canvas = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, WIDTH, BANNER_HEIGHT], fill=BANNER_COLOURS[banner.kind])
    draw.text(
        (WIDTH / 2, BANNER_HEIGHT / 2),
        banner.text,
        fill=(255, 255, 255),
        font=_font(BANNER_FONT),
        anchor="mm",
    )

    frames = (ed, es)
    spacing = (float(result.pixel_spacing_mm[0]), float(result.pixel_spacing_mm[1]))
    box = crop_box(
        np.stack([frame.labels for frame in frames]), (classes.blood_pool, classes.myocardium), spacing
    )
    shown = window([np.asarray(frame.pixels, dtype=np.float64) for frame in frames])
    title = _font(TITLE_FONT)
    captions = (f"End diastole (phase {result.ed_phase + 1})", f"End systole (phase {result.es_phase + 1})")
    for index, (frame, caption) in enumerate(zip(frames, captions, strict=True)):
        left = MARGIN + index * (PANEL_SIZE + MARGIN)
        draw.text((left, CAPTION_TOP), caption, fill=TEXT, font=title)
        canvas.paste(_panel(frame, box, shown, classes), (left, PANEL_TOP))
    legend_y = PANEL_TOP + PANEL_SIZE + 8
    small = _font(SMALL_FONT)
    draw.rectangle([MARGIN, legend_y + 3, MARGIN + 12, legend_y + 15], fill=BLOOD_POOL_COLOUR)
    draw.text((MARGIN + 18, legend_y), "LV blood pool (AI)", fill=TEXT, font=small)
    draw.rectangle([MARGIN + 190, legend_y + 3, MARGIN + 202, legend_y + 15], fill=MYOCARDIUM_COLOUR)
    draw.text((MARGIN + 208, legend_y), "LV myocardium (AI)", fill=TEXT, font=small)

    _curve(draw, result, (MARGIN, CURVE_TOP, 2 * PANEL_SIZE + 2 * MARGIN, HEIGHT - MARGIN))
    draw.line([(COLUMN_LEFT - 14, CAPTION_TOP), (COLUMN_LEFT - 14, HEIGHT - MARGIN)], fill=AXIS_COLOUR)
    _values_column(draw, result, mid_slice, COLUMN_LEFT)
    return np.asarray(canvas, dtype=np.uint8).copy()
