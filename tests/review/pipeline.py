"""Run the real node pipeline on a small Sunnybrook subset: receive, wait out the quiet period, measure.

Nothing here is faked: ``Node.build`` with a manual clock, the real model; the node's publisher then
stores the draft SR and secondary capture with the real report builders.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from node.app import Node
from node.clock import ManualClock
from node.reports.sources import sanitised_for_copy
from node.store.results import ResultRecord

PHASES = 20
#: Four mid-ventricular slices of one series: enough for a stack, quick to segment.
SLICES = range(4, 8)


def subset(sunnybrook: Path, series: str = "SCD0000101", slices: range = SLICES) -> list[Path]:
    """``slices`` x 20 phases of one Sunnybrook series (files are numbered slice-major)."""
    files = {int(path.stem): path for path in (sunnybrook / series).glob("*.dcm")}
    return [files[s * PHASES + p + 1] for s in slices for p in range(PHASES)]


def process(node: Node, clock: ManualClock, files: list[Path]) -> ResultRecord:
    """Receive ``files`` as one study, let it go quiet, measure it; return its current result row."""
    for path in files:
        node.ingest.store(path.read_bytes())
    clock.advance(node.settings.pipeline.stable_seconds + 1)
    (job,) = node.assembler.tick()
    node.workers[0].run_once()
    (row,) = node.queue.results_for_study(job.study_instance_uid)
    return row


def legacy_converted(files: Sequence[Path], directory: Path) -> Path:
    """``files`` as one Legacy Converted Enhanced MR Image (PS3.3 A.71), built by highdicom, in ``directory``.

    Sunnybrook headers carry dates highdicom rejects and a Frame of Reference UID per instance, which a
    legacy conversion requires to be one: both are mended in the copies converted. Study and instance
    UIDs are kept, and each frame names its source instance in its Conversion Source Attributes
    Sequence (0020,9172).
    """
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs of the source, repeated for every file
        datasets = [sanitised_for_copy(pydicom.dcmread(path)) for path in files]
        for dataset in datasets:
            dataset.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
        converted = LegacyConvertedEnhancedMRImage(
            datasets,
            series_instance_uid=generate_uid(),
            series_number=900,
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "legacy-converted.dcm"
        converted.save_as(path, enforce_file_format=True)
    return path
