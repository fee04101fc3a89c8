"""The pipeline on files or folders, without the listener: what ``dicomnode measure`` runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.domain import StackResult
from node.errors import NodeError
from node.pipeline.measure import StackMeasurer
from node.pipeline.stacks import StackPlan, find_sax_stacks
from node.store.instance import SpooledInstance, parse_instance

#: The four bytes after the 128-byte preamble of every Part 10 file (PS3.10 7.1).
PART10_MAGIC = b"DICM"


@dataclass
class OfflineRun:
    """What an offline run found: results, studies without a stack, files that could not be read."""

    results: list[StackResult] = field(default_factory=list)
    studies_without_stack: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    #: (series UIDs, reason) of stacks that were found but could not be measured.
    failed_stacks: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    #: Per study, the images stack finding left out, by :class:`~node.pipeline.stacks.SkipReason`:
    #: for a study without a stack, why none was found. Studies that left nothing out are absent.
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and every file under named folders (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def collect(paths: Iterable[Path], unreadable: list[tuple[Path, str]]) -> list[SpooledInstance]:
    """Parse every file's header; files that are not DICOM instances are reported and skipped."""
    instances: list[SpooledInstance] = []
    for path in iter_files(paths):
        try:
            data = path.read_bytes()
            if data[128:132] != PART10_MAGIC:
                unreadable.append((path, "not a DICOM Part 10 file"))
                continue
            header = parse_instance(data)
        except (NodeError, OSError) as error:
            unreadable.append((path, str(error) or type(error).__name__))
            continue
        instances.append(SpooledInstance(header=header, path=str(path.resolve())))
    return instances


def measure_paths(
    paths: Iterable[Path],
    measurer: StackMeasurer,
    progress: Callable[[int, int], None] | None = None,
) -> OfflineRun:
    """Find and measure every short-axis cine stack in the given files and folders."""
    run = OfflineRun()
    instances = collect(paths, run.unreadable)
    by_study: dict[str, list[SpooledInstance]] = {}
    for instance in instances:
        by_study.setdefault(instance.header.study_instance_uid, []).append(instance)
    plans: list[StackPlan] = []
    for study_uid, members in by_study.items():
        search = find_sax_stacks(members)
        if not search.stacks:
            run.studies_without_stack.append(study_uid)
        if search.skipped:
            run.skipped[study_uid] = search.skipped
        plans.extend(search.stacks)
    for done, plan in enumerate(plans):
        try:
            run.results.append(measurer.measure(plan, Path("/")).result)
        except NodeError as error:
            run.failed_stacks.append((plan.series_instance_uids, str(error)))
        if progress is not None:
            progress(done + 1, len(plans))
    return run
