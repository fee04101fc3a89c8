"""Measure one planned stack: pixels -> ONNX segmentation -> areas -> volumes, ED/ES and QC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.domain import BasalRule, ModelIdentity, StackResult
from node.errors import NodeError
from node.inference.measurements import (
    LabelGeometry,
    LabelMeasurement,
    LvClasses,
    base_is_last,
    measure_labels,
    remove_detached_lv,
)
from node.inference.preprocess import Box, normalise
from node.inference.qc import (
    Calibration,
    QcFeatures,
    QualityReport,
    assess,
    calibration_of,
    fragmented_fraction,
    measurement_flags,
)
from node.inference.runner import BACKGROUND, Segmenter
from node.pipeline.pixels import load_pixels
from node.pipeline.stacks import StackPlan

BLOOD_POOL = "lv_blood_pool"
MYOCARDIUM = "lv_myocardium"
#: Widest field of view (mm, each axis) a stack may cover: beyond any MR scanner's bore. A header with
#: absurd Pixel Spacing would otherwise size the model grid past any memory.
MAX_FIELD_OF_VIEW_MM = 1000.0
#: Contrast changes of the test-time augmentation: gamma on the normalised [0, 1] values, brighter and
#: darker mid-tones, as another scanner's sequence or coil would show them.
TTA_GAMMAS = (0.6, 1.6)
#: Apparent sizes of the test-time augmentation of scale: the ED and ES frames are segmented as if
#: their pixels were this many times their size, so the heart is this much smaller and larger on the
#: model grid (just beyond the training's scale augmentation, 0.85-1.18); labels come back on the
#: frames' own grid, where a border the image shows stays put (:attr:`QcFeatures.scale_sensitivity`).
TTA_SCALES = (0.8, 1.25)


class UnmeasurableStack(NodeError):
    """A stack whose geometry is out of any physical range; it alone is not measured."""


class NoLeftVentricle(NodeError):
    """The model labelled LV blood pool in no frame of a stack: there is nothing to measure.

    Reported as that stack's failure, never as a result with EDV 0 and EF 0.
    """


@dataclass(frozen=True)
class AssessedStack:
    """What :meth:`StackMeasurer.assess` derives from a stack's frames.

    Attributes
    ----------
    labels
        ``(slices, phases, rows, cols)`` as measured (detached and left-out LV labels removed).
    measured
        Volumes, areas and what the measurement left out.
    quality
        Status, flags and calibrated confidence.
    features
        What the confidence was estimated from.
    """

    labels: npt.NDArray[np.uint8]
    measured: LabelMeasurement
    quality: QualityReport
    features: QcFeatures


@dataclass(frozen=True)
class _Segmented:
    """A stack's labels as measured, with what quality control needs of the segmentation.

    Attributes
    ----------
    labels
        ``(slices, phases, rows, cols)`` as measured.
    measured
        The measurement of ``labels``.
    uncertain_px
        Each segmented frame's uncertain pixels (of the pair, on the frames it segmented).
    heart
        The LV extent the network ran around (None: the whole grid).
    companion
        The companion network's own labels of each frame the pair segmented (by index among the
        segmented frames); empty without a companion.
    """

    labels: npt.NDArray[np.uint8]
    measured: LabelMeasurement
    uncertain_px: npt.NDArray[np.int64]
    heart: Box | None
    companion: dict[int, npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class MeasuredStack:
    """A result and the label volume ``[slice, phase, row, col]`` it was measured from."""

    result: StackResult
    labels: npt.NDArray[np.uint8]


class StackMeasurer:
    """Measures stacks with one long-lived :class:`Segmenter`."""

    def __init__(
        self,
        segmenter: Segmenter,
        basal_rule: BasalRule = BasalRule.PER_PHASE,
        augment: bool | None = None,
    ) -> None:
        """``augment``: run the test-time augmentations of the ED and ES frames, of mirror and
        contrast (:attr:`QcFeatures.disagreement`) and of scale (:attr:`QcFeatures.scale_sensitivity`);
        by default each only where the card's calibration weighs it, since its variants run through the
        model (and its companion) again. The model evaluation, which fits the calibration over every
        term, always runs both."""
        self.segmenter = segmenter
        self.basal_rule = basal_rule
        card = segmenter.card
        self._blood = card.class_index(BLOOD_POOL)
        self._myo = card.class_index(MYOCARDIUM)
        self._background = card.class_index(BACKGROUND)
        self._classes = LvClasses(self._blood, self._myo, self._background)
        companion = segmenter.companion
        self.model = ModelIdentity(
            name=card.name,
            version=card.version,
            sha256=card.sha256,
            companion_sha256=companion.card.sha256 if companion is not None else None,
        )
        self.calibration: Calibration = calibration_of(card)
        weighs = self.calibration.coefficients
        self.augment = "log_disagreement" in weighs if augment is None else augment
        self.rescale = "scale_sensitivity" in weighs if augment is None else augment

    def measure(self, plan: StackPlan, root: Path) -> MeasuredStack:
        """Segment every frame of the stack and derive measurements and QC.

        Raises
        ------
        NodeError
            This stack cannot be measured: its pixels cannot be decoded (``UnreadablePixels``), or
            its field of view or slice extent is out of any physical range (``UnmeasurableStack``),
            or no frame holds LV blood pool (``NoLeftVentricle``).
            Within those bounds (finite, positive spacings found by the stack finder) every volume
            is a finite number.
        """
        field_of_view = (plan.rows * plan.pixel_spacing[0], plan.columns * plan.pixel_spacing[1])
        if max(field_of_view) > MAX_FIELD_OF_VIEW_MM:
            raise UnmeasurableStack(
                f"field of view {field_of_view[0]:.4g} x {field_of_view[1]:.4g} mm is beyond any MR "
                f"scanner's {MAX_FIELD_OF_VIEW_MM:.0f} mm (Pixel Spacing out of range)"
            )
        extent = plan.slice_positions_mm[-1] - plan.slice_positions_mm[0] + plan.slice_spacing_mm
        if not extent <= MAX_FIELD_OF_VIEW_MM:
            raise UnmeasurableStack(
                f"the slices span {extent:.4g} mm, beyond any MR scanner's {MAX_FIELD_OF_VIEW_MM:.0f} mm "
                "(Image Position out of range)"
            )
        pixels = load_pixels(plan, root)
        # In place: a large stack (many phases, a 512 x 512 matrix) is held as one float32 copy.
        values = normalise(pixels.frames, self.segmenter.card.input.normalisation, out=pixels.frames)
        geometry = LabelGeometry(plan.pixel_spacing, plan.slice_extents_mm, base_is_last(plan.normal))
        assessed = self.assess(values, pixels.present, geometry, plan.flags)
        result, quality = assessed.measured.measurements, assessed.quality
        ed, es = result.ed_phase, result.es_phase
        pixel_area = plan.pixel_spacing[0] * plan.pixel_spacing[1]
        blood_px, myo_px = assessed.measured.blood_pool_px, assessed.measured.myocardium_px

        def uids(phase: int) -> tuple[str | None, ...]:
            return tuple(
                row[phase].header.sop_instance_uid if row[phase] is not None else None  # type: ignore[union-attr]
                for row in plan.grid
            )

        stack_result = StackResult(
            study_instance_uid=plan.study_instance_uid,
            series_instance_uids=plan.series_instance_uids,
            frame_of_reference_uid=plan.frame_of_reference_uid,
            edv_ml=result.edv_ml,
            esv_ml=result.esv_ml,
            ef_pct=result.ef_pct,
            sv_ml=result.sv_ml,
            lv_mass_g=result.lv_mass_g,
            ed_phase=ed,
            es_phase=es,
            slices=plan.slices,
            phases=plan.phases,
            volume_curve_ml=result.volume_curve_ml,
            slice_spacing_mm=plan.slice_spacing_mm,
            pixel_spacing_mm=plan.pixel_spacing,
            qc_status=quality.status,
            qc_flags=quality.flags,
            confidence=quality.confidence,
            qc_features=assessed.features.measured(),
            model=self.model,
            basal_rule=self.basal_rule,
            ed_sop_instance_uids=uids(ed),
            es_sop_instance_uids=uids(es),
            blood_pool_mm2=tuple(tuple(float(v) for v in row * pixel_area) for row in blood_px),
            myocardium_mm2=tuple(tuple(float(v) for v in row * pixel_area) for row in myo_px),
        )
        return MeasuredStack(result=stack_result, labels=assessed.labels)

    def assess(
        self,
        values: npt.NDArray[np.float32],
        present: npt.NDArray[np.bool_],
        geometry: LabelGeometry,
        stack_flags: tuple[str, ...] = (),
        basal_rule: BasalRule | None = None,
    ) -> AssessedStack:
        """Segment, measure and quality-check normalised frames: the one sequence behind every result,
        also run by the model evaluation on arrays (``python -m models.evaluate``).

        Parameters
        ----------
        values
            ``(frames, rows, cols)`` normalised frames, the present cells in slice-major order.
        present
            ``(slices, phases)`` True where a frame was acquired.
        geometry
            Spacing, slice extents and which end is the base.
        stack_flags
            Flags the stack finder raised.
        basal_rule
            The basal rule for this stack; default the measurer's.

        Raises
        ------
        NoLeftVentricle
            No frame holds LV blood pool.
        """
        # cells[s, p]: the frame's index among the segmented (present) frames, -1 where missing.
        cells = np.full(present.shape, -1, dtype=np.int64)
        cells[present] = np.arange(int(present.sum()))
        segmented = self._segment_and_measure(values, present, cells, geometry, basal_rule or self.basal_rule)
        labels, measured, uncertain_px = segmented.labels, segmented.measured, segmented.uncertain_px
        result = measured.measurements
        if result.edv_ml == 0.0:
            raise NoLeftVentricle("no left ventricle found: the model labelled LV blood pool in no frame")
        ed, es = result.ed_phase, result.es_phase
        key = [(s, p) for p in (ed, es) for s in range(present.shape[0]) if present[s, p]]
        blood_key = [labels[s, p] == self._blood for s, p in key]
        total_blood = sum(int(mask.sum()) for mask in blood_key)
        fragments = (
            sum(fragmented_fraction(mask) * int(mask.sum()) for mask in blood_key) / total_blood
            if total_blood
            else 0.0
        )
        pixel_ml = geometry.slice_ml(present.shape[0])
        blood_ml = measured.blood_pool_px * pixel_ml[:, None]
        basal_share = 0.0
        if measured.base_slice is not None:
            basal_share = max(
                float(blood_ml[measured.base_slice, p] / max(blood_ml[:, p].sum(), 1e-9)) for p in (ed, es)
            )
        augmented, companion, scale = self._disagreements(
            values, cells, geometry, pixel_ml, (ed, es), segmented
        )
        features = QcFeatures(
            disagreement=augmented,
            uncertain=sum(int(uncertain_px[cells[s, p]]) for s, p in key) / max(total_blood, 1),
            basal_share=basal_share,
            esv_ml=result.esv_ml,
            edv_ml=result.edv_ml,
            companion_disagreement=companion,
            scale_sensitivity=scale,
        )
        quality = assess(
            edv_ml=result.edv_ml,
            esv_ml=result.esv_ml,
            ef_pct=result.ef_pct,
            curve_ml=np.asarray(result.volume_curve_ml),
            blood_pool_ed_ml=blood_ml[:, ed],
            base_slice=measured.base_slice,
            base_closed=measured.base_closed,
            features=features,
            fragment_fraction=fragments,
            stack_flags=stack_flags + measurement_flags(measured),
            calibration=self.calibration,
        )
        return AssessedStack(labels=labels, measured=measured, quality=quality, features=features)

    def _segment_and_measure(
        self,
        values: npt.NDArray[np.float32],
        present: npt.NDArray[np.bool_],
        cells: npt.NDArray[np.int64],
        geometry: LabelGeometry,
        basal_rule: BasalRule,
    ) -> _Segmented:
        """Segment the stack and measure it.

        With a companion network and the per-phase basal rule, every frame is segmented by the model
        alone, which finds the ED and ES phases; those phases' frames are then segmented again by the
        pair (the mean of the two networks, which the volumes come from), and the stack measured
        again. Where the pair moves ED or ES to a phase it has not segmented, that phase is segmented
        by the pair too, until both lie on phases it segmented: the ED and ES frames, which the
        volumes, mass and QC are read from, are the pair's (a frame missing there is interpolated
        from its slice's other phases, as the measurement does, and those are the model's alone), and
        the other phases (the volume curve between) the model's alone, for a little over half the
        inference of the pair on every frame. On the three Sunnybrook series, as stored and under the
        four synthetic shifts of the model evaluation, the volumes were the pair's on every frame in
        13 of 15 and 0.4 and 1.4 mL below in two (ED on the next phase). Where the model alone finds
        no ventricle, the pair segments every frame before the stack is given up. The every-phase
        rule judges a basal slice by all phases, so there the pair segments every frame (the model
        alone is less sure of a coarse basal slice in some phase than the pair).
        """
        refining = self.segmenter.companion is not None and basal_rule is not BasalRule.EVERY_PHASE
        spacing = geometry.pixel_spacing
        first = self.segmenter.segment(values, spacing, normalised=True, alone=refining)
        grid = np.zeros((*present.shape, *values.shape[1:]), dtype=np.uint8)
        grid[present] = first.labels
        uncertain_px, heart = first.uncertain_px, first.heart
        companion: dict[int, npt.NDArray[np.uint8]] = {}
        if first.companion_labels is not None:
            companion.update(enumerate(first.companion_labels))
        del first  # its labels are copied into the grid
        refined: set[int] = set()
        while True:
            # Measuring clears the labels it leaves out; where the pair may refine, the grid keeps them.
            labels = grid.copy() if refining else grid
            measured = measure_labels(labels, present, geometry, self._classes, basal_rule)
            result = measured.measurements
            key = {result.ed_phase, result.es_phase}
            if result.edv_ml == 0.0:  # no ventricle yet: the pair looks at every phase
                key = set(range(present.shape[1]))
            phases = sorted(key - refined) if refining else []
            if not phases:
                # The companion's labels of the ED and ES frames only (copies: not the whole stack's).
                ends = cells[:, sorted({result.ed_phase, result.es_phase})]
                kept = {
                    frame: companion[frame].copy() for frame in ends[ends >= 0].tolist() if frame in companion
                }
                return _Segmented(labels, measured, uncertain_px, heart, kept)
            where = np.zeros_like(present)
            where[:, phases] = present[:, phases]
            frames = cells[where]  # slice-major, as ``grid[where]`` is ordered
            found = self.segmenter.segment(values[frames], spacing, normalised=True, heart=heart)
            grid[where] = found.labels
            uncertain_px[frames] = found.uncertain_px
            if found.companion_labels is not None:
                companion.update(zip(frames.tolist(), found.companion_labels, strict=True))
            refined.update(phases)

    def _disagreements(
        self,
        values: npt.NDArray[np.float32],
        cells: npt.NDArray[np.int64],
        geometry: LabelGeometry,
        pixel_ml: npt.NDArray[np.float64],
        phases: tuple[int, int],
        segmented: _Segmented,
    ) -> tuple[float | None, float, float | None]:
        """Relative changes of the ED or ES blood-pool volume, the larger of the two phases: under the
        test-time augmentation of mirror and contrast (None where :attr:`augment` is off); between
        the measured volume (with a companion: of the pair) and the companion alone (0 without one);
        and between the smallest and largest apparent size of the heart (None where :attr:`rescale`
        is off).

        The ED and ES frames (the basal frames the measurement left out count in none) run again
        mirrored (on the mirror image of the window the prediction ran on, if any) and with their
        contrast changed (:data:`TTA_GAMMAS`) where :attr:`augment` is on, and by the model alone (half
        the cost of the pair: the two sizes are compared with each other) with their pixels taken as
        :data:`TTA_SCALES` times their size where :attr:`rescale` is on; the companion's own
        labels of them come from the pair's run (:attr:`_Segmented.companion`). Each change is
        relative to the measured volume (``pixel_ml``: mL per blood-pool pixel on each slice).
        """
        measured, heart = segmented.measured, segmented.heart
        present = (cells >= 0) & ~measured.basal_cells
        spacing = geometry.pixel_spacing
        columns = values.shape[2]
        mirrored_heart = heart.mirrored(columns) if heart is not None else None
        augmented: float | None = 0.0 if self.augment else None
        scale: float | None = 0.0 if self.rescale else None
        companion = 0.0
        for phase in dict.fromkeys(phases):
            kept = present[:, phase]
            frames = values[cells[kept, phase]]
            measured_ml = float((measured.blood_pool_px[kept, phase] * pixel_ml[kept]).sum())
            if measured_ml <= 0.0:
                continue
            slice_ml = pixel_ml[kept]
            if augmented is not None:
                variants = [
                    (np.ascontiguousarray(frames[:, :, ::-1]), mirrored_heart, True),
                    # Gamma on [0, 1]: a card whose normalisation reaches outside it is clipped here.
                    *(
                        (np.power(np.clip(frames, 0.0, 1.0), gamma, dtype=np.float32), heart, False)
                        for gamma in TTA_GAMMAS
                    ),
                ]
                for pixels, window, mirrored in variants:
                    found = self.segmenter.segment(pixels, spacing, normalised=True, heart=window).labels
                    variant_ml = self._volume(found, mirrored, slice_ml, spacing)
                    augmented = max(augmented, _relative_change(variant_ml, measured_ml, measured_ml))
            if scale is not None:
                sized = []
                for factor in TTA_SCALES:
                    seen_as = (spacing[0] * factor, spacing[1] * factor)
                    found = self.segmenter.segment(
                        frames, seen_as, normalised=True, heart=heart, alone=True
                    ).labels
                    sized.append(self._volume(found, False, slice_ml, spacing))
                scale = max(scale, _relative_change(max(sized), min(sized), measured_ml))
            if segmented.companion:
                found = np.stack([segmented.companion[frame] for frame in cells[kept, phase].tolist()])
                variant_ml = self._volume(found, False, slice_ml, spacing)
                companion = max(companion, _relative_change(variant_ml, measured_ml, measured_ml))
        return augmented, companion, scale

    def _volume(
        self,
        found: npt.NDArray[np.uint8],
        mirrored: bool,
        slice_ml: npt.NDArray[np.float64],
        spacing: tuple[float, float],
    ) -> float:
        """The blood-pool volume of one variant's labels (``slice_ml``: mL per blood-pool pixel on each
        of its frames), after the same removal of detached labels as the measurement."""
        stacked = np.ascontiguousarray((found[:, :, ::-1] if mirrored else found)[:, None])
        remove_detached_lv(stacked, self._blood, self._myo, self._background, spacing)
        return float(((stacked[:, 0] == self._blood).sum(axis=(1, 2)) * slice_ml).sum())


def _relative_change(volume_ml: float, other_ml: float, measured_ml: float) -> float:
    """How far two volumes lie apart, relative to the measured volume."""
    return abs(volume_ml - other_ml) / measured_ml
