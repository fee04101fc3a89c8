"""Publish results: build the draft SR, the secondary capture (and SEG) and put them in the outbox.

SOP Instance UIDs are derived from the result id, so rebuilding after a crash yields the same UIDs
and the outbox (unique per SOP Instance UID) never schedules an object twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError

from node.clock import Clock
from node.config import AnyDestination
from node.dicom.instance import SpooledInstance
from node.domain import OutboxKind, StackResult, ejection_fraction, stroke_volume
from node.failpoints import failpoint
from node.logging import Pseudonymiser, get_logger
from node.pipeline.grid import load_plan
from node.reports.codes import ReviewStatus
from node.reports.errors import ReportError
from node.reports.labels import LabelClasses
from node.reports.render import Banner, Frame, render_summary
from node.reports.sc import build_sc
from node.reports.seg import build_seg_series
from node.reports.sources import (
    ReportSources,
    load_report_sources,
    load_stack_headers,
    stack_frame_numbers,
)
from node.reports.sr import build_draft_sr, derived_uid
from node.store.index import Index
from node.store.jobs import JobQueue
from node.store.labels import decode_labels
from node.store.outbox import Outbox, OutgoingObject
from node.store.results import ResultRecord

log = get_logger(__name__)

DRAFT_SR = OutboxKind.DRAFT_SR
SECONDARY_CAPTURE = OutboxKind.SC
SEGMENTATION = OutboxKind.SEG


def encode(dataset: Dataset) -> bytes:
    """Part 10 bytes of a dataset (file meta included)."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Stack:
    result: StackResult
    grid: Sequence[Sequence[SpooledInstance | None]]
    labels: npt.NDArray[np.uint8]
    sources: ReportSources


@dataclass
class Publisher:
    """Turns stored results into outbox objects, one result per step."""

    index: Index
    queue: JobQueue
    outbox: Outbox
    spool_root: Path
    results_root: Path
    classes: LabelClasses
    destinations: Sequence[AnyDestination]
    send_seg: bool
    clock: Clock
    pseudonymise: Pseudonymiser

    def run_once(self) -> bool:
        """Publish the oldest unpublished result; False when there was none."""
        row = self.queue.next_unpublished()
        if row is None:
            return False
        if row.measured and not row.superseded:
            try:
                self._publish(row)
            except (OSError, SQLAlchemyError):
                raise  # the disk or the index: passing trouble, retried by the loop
            except Exception:
                # Anything else fails the same way every time: retrying would hold every later
                # result behind this one. The result stays on the worklist for review.
                log.exception("reports not built for a result", result=row.id)
        self.queue.mark_published(row.id)
        return True

    def _stack(self, row: ResultRecord) -> _Stack | None:
        """The result, its stack's grid, labels and report sources, loaded from what the worker stored
        with it; None when the images it was measured on can no longer be read (logged)."""
        result = row.stack_result()
        plan = load_plan(row.grid, self.index, self.spool_root) if row.grid is not None else None
        if plan is None or row.labels_path is None:
            log.warning("the images of a result can no longer be read", result=row.id)
            return None
        labels = decode_labels((self.results_root / row.labels_path).read_bytes())
        return _Stack(result, plan.grid, labels, load_report_sources(plan.grid, result, self.spool_root))

    def _picture(
        self,
        stack: _Stack,
        banner: Banner,
        review: ReviewStatus,
        sop_uid: str,
        series_uid: str,
        now: datetime,
    ) -> Dataset:
        result, sources, labels = stack.result, stack.sources, stack.labels
        picture = render_summary(
            result,
            ed=Frame(sources.ed_pixels, labels[sources.mid_slice, result.ed_phase]),
            es=Frame(sources.es_pixels, labels[sources.mid_slice, result.es_phase]),
            mid_slice=sources.mid_slice,
            classes=self.classes,
            banner=banner,
        )
        return build_sc(
            picture,
            sources.ed_image,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            instance_number=1,
            review=review,
            now=now,
            source_frame_number=sources.drawn_frame_numbers[0],
            referenced_images=(sources.ed_image, sources.es_image),
            referenced_frame_numbers=sources.drawn_frame_numbers,
        )

    def verified_secondary_capture(
        self,
        result_id: str,
        *,
        observer_name: str,
        verified_at: datetime,
        review: ReviewStatus,
        amended: tuple[float, float] | None,
        sop_instance_uid: str,
        series_instance_uid: str,
    ) -> Dataset | None:
        """The secondary capture of a reviewed result, with the "VERIFIED BY ..." banner.

        Amended EDV/ESV replace the AI's on the picture (EF and SV recomputed); None when the
        result's stack can no longer be read.
        """
        row = self.queue.result(result_id)
        stack = self._stack(row) if row is not None else None
        if stack is None:
            return None
        if amended is not None:
            edv, esv = amended
            stack = replace(
                stack,
                result=replace(
                    stack.result,
                    edv_ml=edv,
                    esv_ml=esv,
                    sv_ml=stroke_volume(edv, esv),
                    ef_pct=ejection_fraction(edv, esv),
                ),
            )
        banner = Banner.verified(observer_name, verified_at, review)
        return self._picture(stack, banner, review, sop_instance_uid, series_instance_uid, verified_at)

    def _segmentations(self, result_id: str, stack: _Stack, now: datetime) -> list[Dataset]:
        """The SEG series of a result; none, logged, when its sources cannot have one.

        The SEG is an optional extra: highdicom takes a multi-frame source only with one plane
        orientation and pixel spacing for the frames segmented, for instance, and a stack that
        cannot have a SEG still gets its SR and SC.
        """
        frame_numbers = stack_frame_numbers(stack.grid)
        try:
            return build_seg_series(
                load_stack_headers(stack.grid, self.spool_root),
                stack.labels,
                classes=self.classes,
                model=stack.result.model,
                basal_rule=stack.result.basal_rule,
                series_instance_uid=derived_uid(result_id, "series", SEGMENTATION),
                sop_instance_uids=[
                    derived_uid(result_id, SEGMENTATION, str(p)) for p in range(stack.result.phases)
                ],
                now=now,
                frame_numbers_by_cell=frame_numbers,
            )
        except ReportError as error:
            log.warning(
                "SEG not built",
                result=result_id,
                study=self.pseudonymise(stack.result.study_instance_uid),
                reason=str(error),
            )
            return []

    def _publish(self, row: ResultRecord) -> None:
        result_id = row.id
        stack = self._stack(row)
        if stack is None:
            return
        result = stack.result
        now = self.clock.now()
        objects: list[tuple[OutboxKind, Dataset]] = [
            (
                DRAFT_SR,
                build_draft_sr(
                    result,
                    stack.sources.evidence,
                    series_instance_uid=derived_uid(result_id, "series", DRAFT_SR),
                    sop_instance_uid=derived_uid(result_id, DRAFT_SR),
                    instance_number=1,
                    now=now,
                    ed_frame_numbers=stack.sources.ed_frame_numbers,
                    es_frame_numbers=stack.sources.es_frame_numbers,
                ),
            ),
            (
                SECONDARY_CAPTURE,
                self._picture(
                    stack,
                    Banner.unverified(),
                    ReviewStatus.PENDING,
                    derived_uid(result_id, SECONDARY_CAPTURE),
                    derived_uid(result_id, "series", SECONDARY_CAPTURE),
                    now,
                ),
            ),
        ]
        if self.send_seg:
            objects.extend((SEGMENTATION, dataset) for dataset in self._segmentations(result_id, stack, now))
        added = 0
        for kind, dataset in objects:
            item = OutgoingObject(
                sop_instance_uid=str(dataset.SOPInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
                study_instance_uid=result.study_instance_uid,
                kind=kind,
                result_id=result_id,
            )
            added += self.outbox.add(item, encode(dataset), self.destinations, now)
            failpoint("publisher:partial")
        log.info(
            "result published",
            study=self.pseudonymise(result.study_instance_uid),
            objects=len(objects),
            newly_added=added,
        )
