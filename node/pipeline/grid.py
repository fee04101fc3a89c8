"""The measured stack stored with a result, and loaded back from it: the one way every later stage
(reports, the worklist's pictures, the verified picture) gets the images a result was measured on.

The worker stores :func:`stored_grid` of the plan it measured; :func:`load_plan` rebuilds that plan
from the index by SOP Instance UID, whatever arrived in the study since. Only the worker and the
offline ``measure`` search a study for stacks (:func:`node.pipeline.stacks.find_sax_stacks`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from node.dicom.instance import SpooledInstance
from node.domain import GridCell, StackGrid
from node.images.frames import SpooledFrame, split_frames
from node.inference.qc import QcFlag
from node.logging import get_logger
from node.pipeline.stacks import StackPlan, find_sax_stacks
from node.store.index import Index
from node.store.jobs import JobQueue

log = get_logger(__name__)


#: The fields a StackGrid shares with the StackPlan it records (all but the cells).
_GEOMETRY = tuple(field.name for field in fields(StackGrid) if field.name != "cells")


def stored_grid(plan: StackPlan) -> StackGrid:
    """The record of ``plan`` that is stored with its result."""
    return StackGrid(
        **{name: getattr(plan, name) for name in _GEOMETRY},
        cells=tuple(
            tuple(
                None
                if cell is None
                else GridCell(
                    cell.header.sop_instance_uid,
                    cell.frame_number if isinstance(cell, SpooledFrame) else None,
                )
                for cell in row
            )
            for row in plan.grid
        ),
    )


def backfill_grids(queue: JobQueue, index: Index, spool_root: Path) -> tuple[int, int]:
    """Give results an older node recorded without their grid the grid of their stack (start-up, once).

    The stack is searched once more, here only, with the rule that node used to find it again
    (the same series, slices and phases); from then on the result loads it like any other.
    Returns (grids stored, results whose stack is no longer there).
    """
    stored = missing = 0
    for row in queue.measured_without_grid():
        result = row.stack_result()
        plans = [
            plan
            for plan in find_sax_stacks(index.study_instances(row.study_instance_uid), root=spool_root).stacks
            if plan.series_instance_uids == result.series_instance_uids
            and (plan.slices, plan.phases) == (result.slices, result.phases)
        ]
        if plans:
            queue.set_grid(row.id, stored_grid(plans[0]))
            stored += 1
        else:
            missing += 1
    return stored, missing


def load_plan(grid: StackGrid, index: Index, spool_root: Path) -> StackPlan | None:
    """The plan ``grid`` was stored from, its cells read from the index; None when an image it names
    is no longer indexed or readable (logged)."""
    wanted = {cell.sop_instance_uid for row in grid.cells for cell in row if cell is not None}
    found = index.instances_by_uid(wanted)
    if len(found) != len(wanted):
        log.warning("stored stack names images the index no longer holds", missing=len(wanted) - len(found))
        return None
    frames: dict[str, dict[int, SpooledFrame]] = {}

    def cell_of(cell: GridCell | None) -> SpooledInstance | None:
        if cell is None:
            return None
        instance = found[cell.sop_instance_uid]
        if cell.frame_number is None:
            return instance
        if cell.sop_instance_uid not in frames:
            split = split_frames(instance, spool_root / instance.path)
            frames[cell.sop_instance_uid] = (
                {} if not isinstance(split, tuple) else {frame.frame_number: frame for frame in split}
            )
        return frames[cell.sop_instance_uid].get(cell.frame_number)

    rows = tuple(tuple(cell_of(cell) for cell in row) for row in grid.cells)
    lost = sum(
        1
        for stored, loaded in zip(grid.cells, rows, strict=True)
        for a, b in zip(stored, loaded, strict=True)
        if (a is None) != (b is None)
    )
    if lost:
        log.warning("stored stack names frames that can no longer be read", frames=lost)
        return None
    geometry = {name: getattr(grid, name) for name in _GEOMETRY}
    geometry["flags"] = tuple(QcFlag(flag) for flag in grid.flags)
    return StackPlan(**geometry, grid=rows)
