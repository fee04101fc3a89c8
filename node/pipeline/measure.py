"""Measure one planned stack: pixels -> ONNX segmentation -> areas -> volumes, ED/ES and QC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.domain import ModelIdentity, StackResult
from node.errors import NodeError
from node.inference.measurements import (
    LabelGeometry,
    LvClasses,
    base_is_last,
    measure_labels,
    remove_detached_lv,
    volume_curve_ml,
)
from node.inference.preprocess import Box, normalise
from node.inference.qc import assess, fragmented_fraction, measurement_flags
from node.inference.runner import BACKGROUND, Segmenter
from node.pipeline.pixels import load_pixels
from node.pipeline.stacks import StackPlan

BLOOD_POOL = "lv_blood_pool"
MYOCARDIUM = "lv_myocardium"
#: Widest field of view (mm, each axis) a stack may cover: beyond any MR scanner's bore. A header with
#: absurd Pixel Spacing would otherwise size the model grid past any memory.
MAX_FIELD_OF_VIEW_MM = 1000.0


class UnmeasurableStack(NodeError):
    """A stack whose geometry is out of any physical range; it alone is not measured."""


class NoLeftVentricle(NodeError):
    """The model labelled LV blood pool in no frame of a stack: there is nothing to measure.

    Reported as that stack's failure, never as a result with EDV 0 and EF 0.
    """


@dataclass(frozen=True)
class MeasuredStack:
    """A result and the label volume ``[slice, phase, row, col]`` it was measured from."""

    result: StackResult
    labels: npt.NDArray[np.uint8]


class StackMeasurer:
    """Measures stacks with one long-lived :class:`Segmenter`."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        card = segmenter.card
        self._blood = card.class_index(BLOOD_POOL)
        self._myo = card.class_index(MYOCARDIUM)
        self._background = card.class_index(BACKGROUND)
        self._classes = LvClasses(self._blood, self._myo, self._background)
        self.model = ModelIdentity(name=card.name, version=card.version)

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
        present = pixels.present
        # In place: a large stack (many phases, a 512 x 512 matrix) is held as one float32 copy.
        values = normalise(pixels.frames, self.segmenter.card.input.normalisation, out=pixels.frames)
        segmentation = self.segmenter.segment(values, plan.pixel_spacing, normalised=True)
        labels = np.zeros((plan.slices, plan.phases, plan.rows, plan.columns), dtype=np.uint8)
        labels[present] = segmentation.labels
        uncertain_px = segmentation.uncertain_px
        heart = segmentation.heart
        del segmentation  # its labels are copied into the grid

        pixel_area = plan.pixel_spacing[0] * plan.pixel_spacing[1]
        measured = measure_labels(
            labels,
            present,
            LabelGeometry(plan.pixel_spacing, plan.slice_extents_mm, base_is_last(plan.normal)),
            self._classes,
        )
        result, basal = measured.measurements, measured.basal_slices
        blood_px, myo_px = measured.blood_pool_px, measured.myocardium_px
        if result.edv_ml == 0.0:
            raise NoLeftVentricle("no left ventricle found: the model labelled LV blood pool in no frame")
        ed, es = result.ed_phase, result.es_phase

        # cells[s, p]: the frame's index among the segmented (present) frames, -1 where missing.
        cells = np.full(present.shape, -1, dtype=np.int64)
        cells[present] = np.arange(int(present.sum()))
        flip_ml = self._flip_disagreement(values, cells, labels, plan, (ed, es), heart, basal)
        key = [(s, p) for p in (ed, es) for s in range(plan.slices) if present[s, p]]
        blood_key = [labels[s, p] == self._blood for s, p in key]
        total_blood = sum(int(mask.sum()) for mask in blood_key)
        fragments = (
            sum(fragmented_fraction(mask) * int(mask.sum()) for mask in blood_key) / total_blood
            if total_blood
            else 0.0
        )
        uncertain = sum(int(uncertain_px[cells[s, p]]) for s, p in key)
        quality = assess(
            edv_ml=result.edv_ml,
            esv_ml=result.esv_ml,
            ef_pct=result.ef_pct,
            curve_ml=np.asarray(result.volume_curve_ml),
            blood_pool_ed_mm2=blood_px[:, ed] * pixel_area,
            flip_disagreement_ml=flip_ml,
            fragment_fraction=fragments,
            uncertain_fraction=uncertain / max(total_blood, 1),
            stack_flags=plan.flags + measurement_flags(measured),
        )

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
            qc_flags=quality.flags,
            confidence=quality.confidence,
            flip_disagreement_ml=flip_ml,
            model=self.model,
            ed_sop_instance_uids=uids(ed),
            es_sop_instance_uids=uids(es),
            blood_pool_mm2=tuple(tuple(float(v) for v in row * pixel_area) for row in blood_px),
            myocardium_mm2=tuple(tuple(float(v) for v in row * pixel_area) for row in myo_px),
        )
        return MeasuredStack(result=stack_result, labels=labels)

    def _flip_disagreement(
        self,
        values: npt.NDArray[np.float32],
        cells: npt.NDArray[np.int64],
        labels: npt.NDArray[np.uint8],
        plan: StackPlan,
        phases: tuple[int, int],
        heart: Box | None,
        excluded: tuple[int, ...],
    ) -> float:
        """Largest |volume difference| (mL) at ED or ES between the prediction and a mirrored input.

        The mirrored frames run on the mirror image of the window the prediction ran on, if any;
        ``excluded`` (basal) slices count in neither.
        """
        present = cells >= 0
        present[list(excluded)] = False
        pixel_area = plan.pixel_spacing[0] * plan.pixel_spacing[1]
        mirrored_heart = heart.mirrored(plan.columns) if heart is not None else None
        worst = 0.0
        for phase in phases:
            indices = cells[:, phase][present[:, phase]]
            if indices.size == 0:
                continue
            mirrored = np.ascontiguousarray(values[indices][:, :, ::-1])
            flipped = self.segmenter.segment(
                mirrored, plan.pixel_spacing, normalised=True, heart=mirrored_heart
            ).labels[:, None, :, ::-1]
            remove_detached_lv(flipped, self._blood, self._myo, self._background, plan.pixel_spacing)
            flipped_px = (flipped[:, 0] == self._blood).sum(axis=(1, 2)).astype(np.float64)
            original_px = (labels[present[:, phase], phase] == self._blood).sum(axis=(1, 2))
            extents = [e for e, kept in zip(plan.slice_extents_mm, present[:, phase], strict=True) if kept]
            difference = volume_curve_ml((flipped_px - original_px)[:, None], pixel_area, extents)
            worst = max(worst, abs(float(difference[0])))
        return worst
