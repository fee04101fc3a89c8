"""LV volumes from per-slice, per-phase mask areas: EDV, ESV, EF, SV, myocardial mass.

Volume at a phase = sum over slices of mask area x slice spacing, the spacing taken from positions
along the slice normal (where slices are missing, their neighbours stand for the gap, see
:attr:`node.pipeline.stacks.StackPlan.slice_extents_mm`). ED and ES are the maximum and minimum of
the blood-pool volume curve over the cardiac cycle, never frame order.

Which basal frames count is decided first (:data:`BASAL_RULES`): the base of the heart moves towards
the apex in systole by about a slice spacing, so the most basal slice is ventricle in diastole and
atrium or outflow tract in systole. Following the SCMR post-processing guideline (Schulz-Menger J. et
al., "Standardized image interpretation and post-processing in cardiovascular magnetic resonance -
2020 update", JCMR 22:19, 2020), a basal blood pool counts as ventricle when at least half of it is
surrounded by myocardium. Two ways to apply it are here (:class:`~node.domain.BasalRule`): phase by
phase, as the guideline and the ACDC experts contour (:func:`basal_cells_per_phase`, the node's
default), and a basal slice counting only when it is ventricle in every phase
(:func:`basal_cells_every_phase`), for readers who contour the same slices at ED and ES, as the
Sunnybrook experts did. Each rule agrees with the experts who contour that way, and disagrees with
the others by the extreme basal slice at ED (``python -m models.evaluate`` prints both on both
datasets).

Before that, LV labels detached from the ventricle are left out (:func:`remove_detached_lv`): a
network labelling frame by frame now and then calls a bright structure far from the heart (stomach,
bowel, a vessel) blood pool, and the ventricle is one structure through the stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.domain import BasalRule, ejection_fraction, stroke_volume

#: LV labels farther than this (mm, in plane) from the ventricle are not part of it (the myocardium
#: is at most about 15 mm thick, and a breath-hold shifts a slice by less than a few millimetres).
DETACHED_DISTANCE_MM = 30.0
#: A blood pool at least this fraction surrounded by myocardium is ventricle (SCMR 2020 guideline).
VENTRICLE_SURROUND_FRACTION = 0.5
#: Typical direction from the base of the LV to its apex in patient coordinates (DICOM LPS: x to the
#: patient's left, y posterior, z superior): the apex points left, anterior and inferior.
APEX_DIRECTION_LPS = (1.0 / np.sqrt(3.0), -1.0 / np.sqrt(3.0), -1.0 / np.sqrt(3.0))
#: The slice normal tells which end of a stack is the base when it is within this cosine (60 degrees)
#: of :data:`APEX_DIRECTION_LPS` either way; an oblique stack or a heart on the right (dextrocardia,
#: cosine about 1/3) is left to the blood pool.
APEX_AXIS_MIN_COSINE = 0.5
#: Density of myocardium, g/mL (the conventional value used for CMR LV mass).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05
_MM3_PER_ML = 1000.0


@dataclass(frozen=True)
class Measurements:
    """The quantitative result for one stack."""

    edv_ml: float
    esv_ml: float
    ef_pct: float
    sv_ml: float
    lv_mass_g: float
    ed_phase: int
    es_phase: int
    volume_curve_ml: tuple[float, ...]


def volume_curve_ml(
    areas_px: npt.NDArray[np.floating], pixel_area_mm2: float, slice_extents_mm: Sequence[float] | float
) -> npt.NDArray[np.float64]:
    """Volume per phase from ``(slices, phases)`` mask areas in pixels (NaN cells count as 0).

    ``slice_extents_mm``: the length along the normal each slice stands for (one value: all alike).
    """
    areas = np.nan_to_num(np.asarray(areas_px, dtype=np.float64), nan=0.0)
    extents = np.asarray(slice_extents_mm, dtype=np.float64)
    weighted = areas * (extents[:, None] if extents.ndim == 1 else extents)
    result: npt.NDArray[np.float64] = weighted.sum(axis=0) * pixel_area_mm2 / _MM3_PER_ML
    return result


def measure(
    blood_pool_px: npt.NDArray[np.floating],
    myocardium_px: npt.NDArray[np.floating],
    pixel_area_mm2: float,
    slice_extents_mm: Sequence[float] | float,
) -> Measurements:
    """EDV/ESV (max/min of the blood-pool curve), EF, SV and myocardial mass at ED.

    Parameters
    ----------
    blood_pool_px, myocardium_px
        ``(slices, phases)`` mask areas in pixels.
    pixel_area_mm2
        Row spacing x column spacing, from PixelSpacing (0028,0030).
    slice_extents_mm
        The length along the normal each slice stands for: the distance between adjacent slice
        centres, more where slices are missing (one value: every slice alike).
    """
    curve = volume_curve_ml(blood_pool_px, pixel_area_mm2, slice_extents_mm)
    ed_phase = int(np.argmax(curve))
    es_phase = int(np.argmin(curve))
    edv = float(curve[ed_phase])
    esv = float(curve[es_phase])
    sv = stroke_volume(edv, esv)
    ef = ejection_fraction(edv, esv)
    myocardium = volume_curve_ml(myocardium_px, pixel_area_mm2, slice_extents_mm)
    return Measurements(
        edv_ml=edv,
        esv_ml=esv,
        ef_pct=ef,
        sv_ml=sv,
        lv_mass_g=float(myocardium[ed_phase]) * MYOCARDIAL_DENSITY_G_PER_ML,
        ed_phase=ed_phase,
        es_phase=es_phase,
        volume_curve_ml=tuple(float(v) for v in curve),
    )


def _outer_ring(masks: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels 4-adjacent to each 2-D mask of ``(..., rows, cols)`` and outside it."""
    grown = masks.copy()
    grown[..., 1:, :] |= masks[..., :-1, :]
    grown[..., :-1, :] |= masks[..., 1:, :]
    grown[..., :, 1:] |= masks[..., :, :-1]
    grown[..., :, :-1] |= masks[..., :, 1:]
    ring: npt.NDArray[np.bool_] = grown & ~masks
    return ring


def myocardial_surround(
    labels: npt.NDArray[np.integer], blood_pool: int, myocardium: int
) -> npt.NDArray[np.float64]:
    """Fraction of each frame's blood-pool border that touches myocardium; NaN without blood pool.

    ``labels`` is ``(slices, phases, rows, cols)``; the result is ``(slices, phases)``. The border is
    the ring of pixels just outside the blood-pool mask.
    """
    surround = np.full(labels.shape[:2], np.nan)
    for slice_index in range(labels.shape[0]):  # one slice at a time bounds the temporary masks
        frames = labels[slice_index]
        ring = _outer_ring(frames == blood_pool)
        border = ring.sum(axis=(1, 2))
        touching = (ring & (frames == myocardium)).sum(axis=(1, 2))
        has_blood = border > 0
        surround[slice_index, has_blood] = touching[has_blood] / border[has_blood]
    return surround


def base_is_last(normal: Sequence[float]) -> bool | None:
    """Whether the base is the last slice of a stack ordered along ``normal`` (a unit vector in
    patient coordinates), judged by anatomy: None when the normal is not within
    :data:`APEX_AXIS_MIN_COSINE` of the usual long axis (:data:`APEX_DIRECTION_LPS`)."""
    cosine = float(np.dot(normal, APEX_DIRECTION_LPS))
    if abs(cosine) < APEX_AXIS_MIN_COSINE:
        return None
    return cosine < 0  # slices further along the normal lie towards the base


def ventricle_frames(
    labels: npt.NDArray[np.integer], blood_pool: int, myocardium: int
) -> npt.NDArray[np.bool_]:
    """``(slices, phases)``: True where the frame's blood pool is ventricle, that is at least
    :data:`VENTRICLE_SURROUND_FRACTION` surrounded by myocardium (:func:`myocardial_surround`)."""
    surround = myocardial_surround(labels, blood_pool, myocardium)
    ventricle: npt.NDArray[np.bool_] = np.nan_to_num(surround, nan=0.0) >= VENTRICLE_SURROUND_FRACTION
    return ventricle


def basal_order(blood_pool_px: npt.NDArray[np.floating], base_last: bool | None) -> list[int]:
    """The basal half of a stack's slices, from the base inwards.

    ``blood_pool_px`` is ``(slices, phases)``; ``base_last`` says which end is the base where the
    orientation tells (:func:`base_is_last`). None: the end with the larger blood pool (the LV narrows
    to the apex), which is wrong for a stack that stops short of the apex.
    """
    slices = blood_pool_px.shape[0]
    half = slices // 2
    if base_last is None:
        per_slice = np.asarray(blood_pool_px, dtype=np.float64).max(axis=1)
        base_last = bool(per_slice[:half].sum() < per_slice[slices - half :].sum())
    return list(range(slices - 1, slices - 1 - half, -1) if base_last else range(half))


def basal_cells_per_phase(
    labels: npt.NDArray[np.integer],
    blood_pool: int,
    myocardium: int,
    present: npt.NDArray[np.bool_],
    base_last: bool | None = None,
) -> npt.NDArray[np.bool_]:
    """Per phase, the basal frames whose blood pool is not ventricle, counted from the base inwards.

    The SCMR rule applied phase by phase, as experts contour: in each phase, walking from the base,
    frames are left out until the first frame that is ventricle (:func:`ventricle_frames`); at most
    half the stack is examined, a missing frame (``present`` False) is passed over, and nothing is
    left out in a phase where no frame there qualifies (the rule cannot tell where the ventricle
    starts, and QC reports the rest). Frames without blood pool are never marked (nothing to leave
    out).

    Parameters
    ----------
    labels
        ``(slices, phases, rows, cols)`` class indices; missing frames hold background.
    blood_pool, myocardium
        Class indices of the LV blood pool and the LV myocardium.
    present
        ``(slices, phases)`` True where the frame was acquired.
    base_last
        Which end is the base (:func:`basal_order`).

    Returns
    -------
    ``(slices, phases)``: True where the frame's LV labels are left out.
    """
    areas = (labels == blood_pool).sum(axis=(2, 3))
    ventricle = ventricle_frames(labels, blood_pool, myocardium) & (areas > 0)
    excluded = np.zeros(areas.shape, dtype=bool)
    order = basal_order(areas, base_last)
    for phase in range(areas.shape[1]):
        passed: list[int] = []
        for slice_index in order:
            if not present[slice_index, phase]:
                continue  # a missing frame says nothing about where the ventricle starts
            if ventricle[slice_index, phase]:
                excluded[passed, phase] = True
                break
            passed.append(slice_index)
    excluded &= areas > 0
    return excluded


def basal_cells_every_phase(
    labels: npt.NDArray[np.integer],
    blood_pool: int,
    myocardium: int,
    present: npt.NDArray[np.bool_],
    base_last: bool | None = None,
) -> npt.NDArray[np.bool_]:
    """Basal slices that are not ventricle in every phase, counted from the base inwards, left out in
    all their phases (so the same slices make EDV and ESV).

    Walking from the base over at most half the stack, slices are left out until the first slice that
    is ventricle (:func:`ventricle_frames`) in every phase it was acquired in; a missing slice is
    passed over, and nothing is left out when no slice there qualifies. Parameters as
    :func:`basal_cells_per_phase`; returns ``(slices, phases)``, frames without blood pool unmarked.
    """
    areas = (labels == blood_pool).sum(axis=(2, 3))
    ventricle = ventricle_frames(labels, blood_pool, myocardium) & (areas > 0)
    excluded = np.zeros(areas.shape, dtype=bool)
    passed: list[int] = []
    for slice_index in basal_order(areas, base_last):
        if not present[slice_index].any():
            continue
        if bool(np.all(ventricle[slice_index] | ~present[slice_index])):
            excluded[passed] = True
            break
        passed.append(slice_index)
    excluded &= areas > 0
    return excluded


#: The function of each basal rule (see the module docstring).
BASAL_RULES = {BasalRule.PER_PHASE: basal_cells_per_phase, BasalRule.EVERY_PHASE: basal_cells_every_phase}


def remove_detached_lv(
    labels: npt.NDArray[np.integer],
    blood_pool: int,
    myocardium: int,
    background: int,
    pixel_spacing: tuple[float, float],
) -> npt.NDArray[np.int64]:
    """Relabel as background the LV regions detached from the ventricle, in place.

    Per phase, the ventricle is the largest blood-pool region connected through the stack (in-plane
    neighbours, and the same pixel on the adjacent slice); its footprint is its extent over all
    slices. In each frame, a connected region of blood pool and myocardium that lies wholly farther
    than :data:`DETACHED_DISTANCE_MM` from that footprint is detached. Regions near the ventricle
    stay, whatever their size: whether they are ventricle is for the model and the other QC checks.

    Parameters
    ----------
    labels
        ``(slices, phases, rows, cols)`` class indices, slices in order along the normal.
    pixel_spacing
        (row, column) spacing in mm.

    Returns
    -------
    ``(slices, phases)``: the pixels relabelled in each frame.
    """
    removed = np.zeros(labels.shape[:2], dtype=np.int64)
    # Every LV pixel lies within these bounds, the ventricle's footprint too, so distances measured
    # within them are exact.
    anywhere = np.zeros(labels.shape[2:], dtype=bool)
    for frames in labels:  # one slice at a time bounds the temporary masks
        anywhere |= ((frames == blood_pool) | (frames == myocardium)).any(axis=0)
    rows = np.flatnonzero(anywhere.any(axis=1))
    cols = np.flatnonzero(anywhere.any(axis=0))
    if rows.size == 0:
        return removed
    bounded = labels[..., rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    through_stack = np.zeros((3, 3, 3), dtype=bool)
    through_stack[1] = True
    through_stack[0, 1, 1] = through_stack[2, 1, 1] = True
    for phase in range(labels.shape[1]):
        frames = bounded[:, phase]  # a view: relabelling it relabels ``labels``
        blood = frames == blood_pool
        regions, count = ndimage.label(blood, structure=through_stack)
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        footprint = (regions == 1 + int(sizes.argmax())).any(axis=0)
        distance = ndimage.distance_transform_edt(~footprint, sampling=pixel_spacing)
        near = distance <= DETACHED_DISTANCE_MM
        lv = blood | (frames == myocardium)
        for slice_index in np.flatnonzero((lv & ~near).any(axis=(1, 2))):
            parts, _ = ndimage.label(lv[slice_index], structure=np.ones((3, 3), dtype=bool))
            kept = np.unique(parts[near & (parts > 0)])
            far = (parts > 0) & ~np.isin(parts, kept)
            frames[slice_index][far] = background
            removed[slice_index, phase] = int(far.sum())
    return removed


@dataclass(frozen=True)
class LvClasses:
    """Label values of the classes the measurement reads (from the model's card)."""

    blood_pool: int
    myocardium: int
    background: int


@dataclass(frozen=True)
class LabelGeometry:
    """What the measurement needs of a stack's geometry.

    Attributes
    ----------
    pixel_spacing
        (row, column) spacing in mm.
    slice_extents_mm
        The length along the normal each slice stands for (one value: every slice alike).
    base_last
        Whether the base is the last slice (:func:`base_is_last`); None: judged by the blood pool.
    """

    pixel_spacing: tuple[float, float]
    slice_extents_mm: Sequence[float] | float
    base_last: bool | None = None

    def slice_ml(self, slices: int) -> npt.NDArray[np.float64]:
        """``(slices,)``: the volume (mL) one blood-pool pixel stands for on each slice."""
        extents = np.broadcast_to(np.asarray(self.slice_extents_mm, dtype=np.float64), (slices,))
        result: npt.NDArray[np.float64] = (
            extents * self.pixel_spacing[0] * self.pixel_spacing[1] / _MM3_PER_ML
        )
        return result


@dataclass(frozen=True)
class LabelMeasurement:
    """What :func:`measure_labels` derives from a stack's labels.

    Attributes
    ----------
    measurements
        Volumes, EF, SV, mass and ED/ES.
    blood_pool_px, myocardium_px
        ``(slices, phases)`` areas in pixels as measured: missing cells interpolated over the cycle,
        left-out basal frames 0.
    basal_cells
        ``(slices, phases)``: the basal frames left out as not ventricle (:data:`BASAL_RULES`).
    base_slice
        The slice at the base end of the stack (:func:`basal_order`); None for a single slice.
    detached_ml
        The largest volume, in one phase, of LV labels far from the ventricle that were removed.
    """

    measurements: Measurements
    blood_pool_px: npt.NDArray[np.float64]
    myocardium_px: npt.NDArray[np.float64]
    basal_cells: npt.NDArray[np.bool_]
    base_slice: int | None
    detached_ml: float

    @property
    def basal_slices(self) -> tuple[int, ...]:
        """Slices left out in at least one phase."""
        return tuple(int(s) for s in np.flatnonzero(self.basal_cells.any(axis=1)))

    @property
    def base_closed(self) -> bool:
        """Whether the base end slice's blood pool is left out or absent in some phase (the stack
        reaches past the ventricle's base at least then)."""
        return self.base_slice is not None and bool((self.blood_pool_px[self.base_slice] <= 0).any())


def fill_missing(areas: npt.NDArray[np.float64], present: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Interpolate a slice's missing phases from its neighbours over the (cyclic) cardiac cycle."""
    filled = areas.copy()
    phases = areas.shape[1]
    for slice_index in range(areas.shape[0]):
        known = np.flatnonzero(present[slice_index])
        if known.size == 0 or known.size == phases:
            continue
        missing = np.flatnonzero(~present[slice_index])
        filled[slice_index, missing] = np.interp(missing, known, areas[slice_index, known], period=phases)
    return filled


def measure_labels(
    labels: npt.NDArray[np.uint8],
    present: npt.NDArray[np.bool_],
    geometry: LabelGeometry,
    classes: LvClasses,
    basal_rule: BasalRule = BasalRule.PER_PHASE,
) -> LabelMeasurement:
    """The measurement of a ``(slices, phases, rows, columns)`` label stack: the one sequence the node,
    the model evaluation and the QC audit all run.

    LV labels far from the ventricle are removed, missing cells interpolated, basal frames that are not
    ventricle left out (``basal_rule``), then volumes, EF, SV and mass measured. ``labels`` is
    changed in place (removed and left-out LV labels become background), so every later output (the
    contours, the SEG, the worklist) shows what was measured. Pure otherwise: no model, no files.
    """
    pixel_area = geometry.pixel_spacing[0] * geometry.pixel_spacing[1]
    detached = remove_detached_lv(
        labels, classes.blood_pool, classes.myocardium, classes.background, geometry.pixel_spacing
    )
    detached_ml = float(
        volume_curve_ml(detached.astype(np.float64), pixel_area, geometry.slice_extents_mm).max()
    )
    # The base end as the rule finds it: from the areas before anything basal is cleared.
    base_slice = next(
        iter(basal_order((labels == classes.blood_pool).sum(axis=(2, 3)), geometry.base_last)), None
    )
    rule = BASAL_RULES[basal_rule]
    basal = rule(labels, classes.blood_pool, classes.myocardium, present, geometry.base_last)
    for slice_index, phase in np.argwhere(basal):
        frame = labels[slice_index, phase]
        frame[(frame == classes.blood_pool) | (frame == classes.myocardium)] = classes.background
    blood_px = fill_missing((labels == classes.blood_pool).sum(axis=(2, 3)).astype(np.float64), present)
    myo_px = fill_missing((labels == classes.myocardium).sum(axis=(2, 3)).astype(np.float64), present)
    return LabelMeasurement(
        measurements=measure(blood_px, myo_px, pixel_area, geometry.slice_extents_mm),
        blood_pool_px=blood_px,
        myocardium_px=myo_px,
        basal_cells=basal,
        base_slice=base_slice,
        detached_ml=detached_ml,
    )
