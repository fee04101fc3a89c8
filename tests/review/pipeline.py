"""Run the real node pipeline on a small Sunnybrook subset: receive, wait out the quiet period, measure.

Nothing here is faked: ``Node.build`` with a manual clock, the real model; the node's publisher then
stores the draft SR and secondary capture with the real report builders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.app import Node
from node.clock import ManualClock

PHASES = 20
#: Four mid-ventricular slices of one series: enough for a stack, quick to segment.
SLICES = range(4, 8)


def subset(sunnybrook: Path, series: str = "SCD0000101", slices: range = SLICES) -> list[Path]:
    """``slices`` x 20 phases of one Sunnybrook series (files are numbered slice-major)."""
    files = {int(path.stem): path for path in (sunnybrook / series).glob("*.dcm")}
    return [files[s * PHASES + p + 1] for s in slices for p in range(PHASES)]


def process(node: Node, clock: ManualClock, files: list[Path]) -> dict[str, Any]:
    """Receive ``files`` as one study, let it go quiet, measure it; return its current result row."""
    for path in files:
        node.ingest.store(path.read_bytes())
    clock.advance(node.settings.pipeline.stable_seconds + 1)
    (job,) = node.assembler.tick()
    node.workers[0].run_once()
    (row,) = node.queue.results_for_study(job.study_instance_uid)
    return row
