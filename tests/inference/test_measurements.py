"""Unit tests for LV volumes, ED/ES, EF, SV and mass from mask areas (node.inference.measurements)."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference.measurements import (
    MYOCARDIAL_DENSITY_G_PER_ML,
    LabelGeometry,
    LvClasses,
    basal_cells_every_phase,
    basal_cells_per_phase,
    base_is_last,
    measure,
    measure_labels,
    myocardial_surround,
    remove_detached_lv,
    volume_curve_ml,
)

PIXEL_AREA_MM2 = 1.25 * 1.25
SLICE_SPACING_MM = 8.0


def test_volume_curve_sums_slices_times_pixel_area_times_spacing() -> None:
    """Volume per phase = sum over slices of area x pixel area x slice spacing, in mL."""
    areas = np.array([[100, 80, 60], [200, 150, 120], [50, 40, 0]], dtype=np.float64)
    curve = volume_curve_ml(areas, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    expected = np.array([350.0, 270.0, 180.0]) * PIXEL_AREA_MM2 * SLICE_SPACING_MM / 1000.0
    np.testing.assert_allclose(curve, expected)
    assert curve.shape == (3,)


def test_volume_curve_weighs_each_slice_by_the_length_it_stands_for() -> None:
    """Per-slice extents (a missing slice's neighbours stand for half of it each) weigh the areas."""
    areas = np.array([[100.0, 50.0], [200.0, 100.0], [300.0, 150.0]])
    curve = volume_curve_ml(areas, 1.0, [8.0, 12.0, 12.0])
    np.testing.assert_allclose(curve, [6.8, 3.4])  # (100 x 8 + 200 x 12 + 300 x 12) / 1000, and half


def test_volume_curve_counts_nan_cells_as_zero() -> None:
    """A NaN area (missing slice/phase) contributes nothing to the volume."""
    areas = np.array([[100.0, np.nan], [np.nan, 30.0]])
    curve = volume_curve_ml(areas, 1.0, 1000.0)
    np.testing.assert_allclose(curve, [100.0, 30.0])


def _cycle(phases: int, ed: int, es: int) -> np.ndarray:
    """A (phases,) factor in [0.4, 1.0] peaking at ``ed`` and bottoming at ``es``."""
    shape = np.empty(phases)
    for phase in range(phases):
        # Piecewise-cosine between ED and ES, going forward cyclically.
        to_es = (es - ed) % phases
        offset = (phase - ed) % phases
        t = offset / to_es if offset <= to_es else 1.0 - (offset - to_es) / (phases - to_es)
        shape[phase] = 1.0 - 0.6 * (1 - np.cos(np.pi * t)) / 2
    return shape


def test_measure_takes_ed_and_es_from_the_curve_not_frame_order() -> None:
    """ED is the argmax and ES the argmin of the volume curve, even with ED at phase 18 of 20."""
    cycle = _cycle(20, ed=18, es=7)
    per_slice = np.array([300.0, 900.0, 1200.0, 800.0, 200.0])
    blood = per_slice[:, None] * cycle[None, :]
    myo = np.full_like(blood, 400.0) + np.arange(20)[None, :]  # differs per phase: mass must use ED
    result = measure(blood, myo, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    curve = volume_curve_ml(blood, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    assert result.ed_phase == 18
    assert result.es_phase == 7
    assert result.edv_ml == pytest.approx(curve[18])
    assert result.esv_ml == pytest.approx(curve[7])
    assert result.volume_curve_ml == pytest.approx(tuple(curve))


def test_measure_ef_sv_and_mass_formulas() -> None:
    """SV = EDV - ESV, EF = 100 x SV / EDV, LV mass = myocardium volume at ED x 1.05 g/mL."""
    cycle = _cycle(20, ed=18, es=7)
    blood = np.array([500.0, 1000.0, 700.0])[:, None] * cycle[None, :]
    myo = np.array([300.0, 350.0, 320.0])[:, None] * (1.0 + 0.01 * np.arange(20))[None, :]
    result = measure(blood, myo, PIXEL_AREA_MM2, SLICE_SPACING_MM)
    edv = 2200.0 * PIXEL_AREA_MM2 * SLICE_SPACING_MM / 1000.0
    esv = 0.4 * edv
    assert result.edv_ml == pytest.approx(edv)
    assert result.esv_ml == pytest.approx(esv)
    assert result.sv_ml == pytest.approx(edv - esv)
    assert result.ef_pct == pytest.approx(60.0)
    myo_ed_ml = 970.0 * 1.18 * PIXEL_AREA_MM2 * SLICE_SPACING_MM / 1000.0
    assert MYOCARDIAL_DENSITY_G_PER_ML == 1.05
    assert result.lv_mass_g == pytest.approx(myo_ed_ml * 1.05)


def test_measure_treats_nan_areas_as_zero() -> None:
    """NaN cells give the same result as zeros in their place."""
    blood = np.array([[100.0, 60.0, 80.0], [200.0, 120.0, 150.0]])
    myo = np.full_like(blood, 50.0)
    with_nan = blood.copy()
    with_nan[0, 1] = np.nan
    with_zero = blood.copy()
    with_zero[0, 1] = 0.0
    assert measure(with_nan, myo, 1.0, 10.0) == measure(with_zero, myo, 1.0, 10.0)


def test_measure_empty_masks_give_zero_ef_not_division_error() -> None:
    """All-zero areas give EDV 0 and EF 0 instead of dividing by zero."""
    zeros = np.zeros((3, 4))
    result = measure(zeros, zeros, 1.0, 10.0)
    assert result.edv_ml == 0.0
    assert result.ef_pct == 0.0


BLOOD, MYO = 3, 2


def _disk(size: int, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= radius**2


def _frame(size: int, blood_radius: float, myo_fraction: float) -> np.ndarray:
    """A blood-pool disk with a myocardial ring over the left ``myo_fraction`` of its columns."""
    labels = np.zeros((size, size), np.uint8)
    ring = _disk(size, blood_radius + 3) & ~_disk(size, blood_radius)
    cols = np.nonzero(ring.any(axis=0))[0]
    cutoff = cols[0] + myo_fraction * (cols[-1] - cols[0] + 1)
    labels[ring & (np.arange(size)[None, :] < cutoff)] = MYO
    labels[_disk(size, blood_radius)] = BLOOD
    return labels


def test_myocardial_surround_is_the_share_of_the_border_on_myocardium() -> None:
    """A pool inside a full ring is surrounded (1.0); half a ring about 0.5; no pool is NaN."""
    labels = np.stack([np.stack([_frame(64, 12, 1.0), _frame(64, 12, 0.5), np.zeros((64, 64), np.uint8)])])
    surround = myocardial_surround(labels, BLOOD, MYO)
    assert surround.shape == (1, 3)
    assert surround[0, 0] == pytest.approx(1.0)
    assert 0.4 < surround[0, 1] < 0.6
    assert np.isnan(surround[0, 2])


def _stack(surrounds: list[list[float]], radii: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(slices, phases, 64, 64)`` and blood areas from a surround fraction per frame."""
    labels = np.stack(
        [
            np.stack(
                [
                    _frame(64, radius, fraction) if fraction > 0 else np.zeros((64, 64), np.uint8)
                    for fraction in row
                ]
            )
            for row, radius in zip(surrounds, radii, strict=True)
        ]
    )
    return labels, (labels == BLOOD).sum(axis=(2, 3)).astype(np.float64)


def _left_out(labels: np.ndarray, present: np.ndarray, base_last: bool | None = None) -> set[tuple[int, int]]:
    """The (slice, phase) frames the basal rule leaves out."""
    cells = basal_cells_per_phase(labels, BLOOD, MYO, present, base_last)
    return {(int(s), int(p)) for s, p in np.argwhere(cells)}


def test_basal_slice_that_is_atrium_in_systole_is_left_out_in_those_phases_only() -> None:
    """Base first: slice 0 is ventricle in diastole and open (atrium) in systole, so it counts in the
    phases where it is ventricle and is left out of the others (SCMR, phase by phase)."""
    labels, blood = _stack(
        [[1.0, 0.2, 0.3, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
        [14, 13, 10, 5],
    )
    present = np.ones(blood.shape, bool)
    assert _left_out(labels, present) == {(0, 1), (0, 2)}


def test_basal_end_is_found_from_the_larger_blood_pool_and_the_apex_is_kept() -> None:
    """Base last: the open basal slice goes where it is open; an apical slice whose pool vanishes at ES
    stays; a basal frame without blood pool has nothing to leave out."""
    surrounds = [
        [1.0, 0.0, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.3, 0.0, 0.4],
    ]
    labels, blood = _stack(surrounds, [4, 9, 11, 13, 14, 15])
    present = np.ones(blood.shape, bool)
    assert _left_out(labels, present) == {(5, 0), (5, 2)}


def test_the_orientation_names_the_base_of_a_stack_cut_short_of_the_apex() -> None:
    """A stack stopping at mid-ventricle: its mid slices outweigh the base, so the blood pool points at
    the wrong end (nothing left out, atrium counted); the orientation names the base and the basal
    slice is left out in the phases where it is atrium."""
    labels, blood = _stack(
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.2, 0.3]],
        [15, 15, 14, 12, 7],
    )
    present = np.ones(blood.shape, bool)
    assert _left_out(labels, present) == set()
    assert _left_out(labels, present, base_last=True) == {(4, 1), (4, 2)}


def test_the_node_leaves_out_basal_slices_that_are_not_ventricle_throughout() -> None:
    """The rule the node measures with: a basal slice open (atrium) in any phase is left out in every
    phase, so the same slices make EDV and ESV; the apex and missing frames never count against it."""
    labels, blood = _stack(
        [[1.0, 0.2, 0.3, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
        [14, 13, 10, 5],
    )
    present = np.ones(blood.shape, bool)
    cells = basal_cells_every_phase(labels, BLOOD, MYO, present)
    assert {(int(s), int(p)) for s, p in np.argwhere(cells)} == {(0, 0), (0, 1), (0, 2), (0, 3)}
    present[0, 1:3] = False  # the open frames were never acquired: nothing is left out
    assert not basal_cells_every_phase(labels, BLOOD, MYO, present).any()
    base_last, _ = _stack([[1.0, 1.0, 1.0]] * 4 + [[1.0, 0.2, 0.3]], [15, 15, 14, 12, 7])
    assert not basal_cells_every_phase(base_last, BLOOD, MYO, np.ones((5, 3), bool)).any()
    cells = basal_cells_every_phase(base_last, BLOOD, MYO, np.ones((5, 3), bool), base_last=True)
    assert {int(s) for s, _ in np.argwhere(cells)} == {4}


def test_two_open_basal_slices_in_systole_both_go_in_that_phase() -> None:
    """At ES the base has moved two slices: both are left out at ES, neither at ED."""
    labels, blood = _stack(
        [[1.0, 0.1], [1.0, 0.3], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [15, 14, 13, 12, 9, 5]
    )
    present = np.ones(blood.shape, bool)
    assert _left_out(labels, present) == {(0, 1), (1, 1)}


@pytest.mark.parametrize(
    ("normal", "expected"),
    [
        ((-0.67, 0.67, 0.32), True),  # SCD0000101: slices run from apex to base along the normal
        ((0.67, -0.67, -0.32), False),  # the same stack listed the other way round
        ((-0.58, -0.58, -0.58), None),  # apex to the right (dextrocardia): cosine 1/3, undecided
        ((0.71, 0.71, 0.0), None),  # a plane along the long axis: cosine 0
    ],
    ids=["sunnybrook", "reversed", "dextrocardia", "long_axis_plane"],
)
def test_base_end_from_the_slice_normal(normal: tuple[float, float, float], expected: bool | None) -> None:
    """The apex lies left, anterior and inferior (LPS +x, -y, -z); a normal far from that says nothing."""
    assert base_is_last(normal) is expected


def test_basal_rule_ignores_missing_frames_and_never_trims_without_a_ventricle_slice() -> None:
    """A missing frame does not exclude a slice; if no basal-half slice qualifies nothing is left out."""
    labels, blood = _stack(
        [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [14, 13, 10, 5]
    )
    present = np.ones(blood.shape, bool)
    present[0, 1] = False  # the only failing frame was never acquired
    assert _left_out(labels, present) == set()
    open_labels, open_blood = _stack([[0.3, 0.3], [0.3, 0.3], [1.0, 1.0], [1.0, 1.0]], [14, 13, 10, 5])
    assert _left_out(open_labels, np.ones(open_blood.shape, bool)) == set()


def _ventricle_stack(slices: int = 5, phases: int = 2, size: int = 96) -> np.ndarray:
    """``(slices, phases, size, size)``: a ventricle (blood-pool disk in a myocardial ring) on every frame."""
    frame = _frame(size, 12, 1.0)
    return np.repeat(np.repeat(frame[None, None], slices, axis=0), phases, axis=1)


def _blob(labels: np.ndarray, top: int, left: int, side: int = 8) -> np.ndarray:
    """A square of blood pool with a one-pixel myocardial rim; returns its (rows, cols) mask."""
    mask = np.zeros(labels.shape[-2:], dtype=bool)
    mask[top : top + side, left : left + side] = True
    labels[..., mask] = MYO
    labels[..., top + 1 : top + side - 1, left + 1 : left + side - 1] = BLOOD
    return mask


def test_lv_labels_far_from_the_ventricle_are_removed() -> None:
    """A blood pool with its rim 60 mm from the ventricle, on one slice in one phase, becomes background."""
    labels = _ventricle_stack()
    original = labels.copy()
    # The ventricle's ring spans pixels 33-63; at 1.5 mm a blob at column 85 is over 30 mm away.
    far = _blob(labels[2, 1], top=10, left=85)
    removed = remove_detached_lv(labels, BLOOD, MYO, 0, (1.5, 1.5))
    assert removed[2, 1] == int(far.sum())
    assert removed.sum() == removed[2, 1]
    assert not labels[2, 1][far].any()
    np.testing.assert_array_equal(labels, original)


def test_lv_labels_near_the_ventricle_stay_whatever_their_size() -> None:
    """A separate piece 10 mm from the ventricle, and an apical pool off the stack's axis, stay.

    Neither is connected to the ventricle through the stack, but both lie within
    ``DETACHED_DISTANCE_MM`` of its footprint: whether they are ventricle is for the model and the
    other QC checks to say.
    """
    labels = _ventricle_stack()
    _blob(labels[1, 0], top=44, left=70)  # 7 pixels (10.5 mm) right of the ring, which ends at 63
    labels[4] = 0
    labels[4, :, 44:52, 66:74] = BLOOD  # the apex: beside slice 3's blood pool, not over it
    kept = labels.copy()
    removed = remove_detached_lv(labels, BLOOD, MYO, 0, (1.5, 1.5))
    assert removed.sum() == 0
    np.testing.assert_array_equal(labels, kept)


def test_detached_lv_removal_without_lv_changes_nothing() -> None:
    """Frames without LV labels (or a stack of background) are left as they are."""
    labels = np.zeros((3, 2, 32, 32), np.uint8)
    labels[1, 0, 5:9, 5:9] = 1  # another class (right ventricle) is never touched
    removed = remove_detached_lv(labels, BLOOD, MYO, 0, (1.5, 1.5))
    assert removed.shape == (3, 2)
    assert removed.sum() == 0
    assert (labels == 1).sum() == 16


def test_the_base_end_is_the_one_the_rule_found_before_clearing_the_basal_slices() -> None:
    """With no orientation, the base is the end with the larger blood pool before basal slices are
    cleared; clearing two of them must not move the base to the apex (which would turn a missing apex
    into a note)."""
    labels, blood = _stack(
        [[1.0, 0.2], [1.0, 0.2], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [10, 11, 10, 9, 7, 5]
    )
    present = np.ones(blood.shape, bool)
    measured = measure_labels(labels, present, LabelGeometry((1.0, 1.0), 10.0), LvClasses(BLOOD, MYO, 0))
    assert measured.base_slice == 0
