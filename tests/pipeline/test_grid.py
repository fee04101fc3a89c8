"""The measured stack stored with a result loads back as the same plan, whatever arrives later."""

from __future__ import annotations

import dataclasses
import json
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from node.clock import ManualClock
from node.domain import Outcome, StackGrid
from node.pipeline.grid import backfill_grids, load_plan, stored_grid
from node.pipeline.stacks import StackPlan, find_sax_stacks
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.jobs import JobQueue, ResultRow
from node.store.spool import Spool
from tests.reports.conftest import build_synthetic
from tests.support import synthetic_mr

SLICES, PHASES = 3, 4
STUDY, SERIES = "1.2.826.0.1.3680043.10.601", "1.2.826.0.1.3680043.10.601.1"


def _image(slice_index: int, phase: int) -> bytes:
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = STUDY, SERIES
    dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.601.2"
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.ImagePositionPatient = [0.0, 0.0, 8.0 * slice_index]
    dataset.TriggerTime = 40.0 * phase
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _only_stack(index: Index, spool: Spool) -> StackPlan:
    (plan,) = find_sax_stacks(index.study_instances(STUDY), root=spool.root).stacks
    return plan


def test_a_stored_grid_loads_back_as_the_plan_it_was_stored_from(tmp_path: Path) -> None:
    """stored_grid -> JSON (as the index keeps it) -> load_plan gives the measured plan, cell for cell,
    also after a whole new slice arrived in the study (which a new search would include)."""
    spool = Spool(tmp_path / "spool")
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    ingest = Ingest(spool, index, ManualClock(), IngestLimits(min_free_bytes=0))
    for slice_index in range(SLICES):
        for phase in range(PHASES):
            ingest.store(_image(slice_index, phase))
    measured = _only_stack(index, spool)
    stored = StackGrid.from_json(json.loads(json.dumps(stored_grid(measured).to_json())))
    for phase in range(PHASES):
        ingest.store(_image(SLICES, phase))
    try:
        assert _only_stack(index, spool).slices == SLICES + 1  # the study has grown
        loaded = load_plan(stored, index, spool.root)
    finally:
        index.close()
    assert loaded == measured


def test_results_an_older_node_recorded_without_a_grid_get_the_grid_of_their_stack(tmp_path: Path) -> None:
    """At start-up, a measured result without a stored grid (recorded before grids were stored) gets
    its stack's grid, found with the rule older nodes used (same series, slices and phases)."""
    clock = ManualClock()
    spool = Spool(tmp_path / "spool")
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    ingest = Ingest(spool, index, clock, IngestLimits(min_free_bytes=0))
    for slice_index in range(SLICES):
        for phase in range(PHASES):
            ingest.store(_image(slice_index, phase))
    queue = JobQueue(index)
    clock.advance(60)
    queue.enqueue_ready(clock.now(), 10.0, 600.0)
    job = queue.claim("test", clock.now())
    assert job is not None
    measured = dataclasses.replace(
        build_synthetic().result, study_instance_uid=STUDY, series_instance_uids=(SERIES,)
    )
    row = ResultRow(stack_index=0, outcome=Outcome.MEASURED, series_instance_uids=(SERIES,), result=measured)
    queue.complete(job, Outcome.MEASURED, [row], clock.now())
    try:
        assert backfill_grids(queue, index, spool.root) == (1, 0)
        (result,) = queue.results_for_study(STUDY)
        assert result.grid == stored_grid(_only_stack(index, spool))
        assert backfill_grids(queue, index, spool.root) == (0, 0)
    finally:
        index.close()
