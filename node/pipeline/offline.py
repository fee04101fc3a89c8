"""The pipeline on files or folders, without the listener: what ``dicomnode measure`` runs."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from node.dicom.instance import SpooledInstance, parse_instance
from node.domain import StackResult
from node.errors import NodeError
from node.pipeline.measure import StackMeasurer
from node.pipeline.media import is_media_directory, listed_files
from node.pipeline.stacks import StackPlan, find_sax_stacks

#: The four bytes after the 128-byte preamble of every Part 10 file (PS3.10 7.1).
PART10_MAGIC = b"DICM"
#: Bytes of the Part 10 preamble.
PART10_PREAMBLE = 128


@dataclass
class OfflineRun:
    """What an offline run found: results, studies without a stack, files that could not be read."""

    results: list[StackResult] = field(default_factory=list)
    #: DICOM instances read (every file found, less the unreadable ones).
    instances: int = 0
    studies_without_stack: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    #: (series UIDs, reason) of stacks that were found but could not be measured.
    failed_stacks: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    #: Per study, the images stack finding left out, by :class:`~node.pipeline.stacks.SkipReason`:
    #: for a study without a stack, why none was found. Studies that left nothing out are absent.
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)


def iter_files(paths: Iterable[Path], unreadable: list[tuple[Path, str]]) -> Iterator[Path]:
    """Paths named directly, and every file under named folders, recursively and sorted.

    Linked folders are followed (each folder once, so a link loop ends); a folder that cannot be
    listed and a link that leads nowhere are reported in ``unreadable`` rather than left out unsaid.
    """
    seen: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        found: list[Path] = []
        for folder, subfolders, names in os.walk(
            path, followlinks=True, onerror=lambda error: unreadable.append(_walk_error(error))
        ):
            real = Path(folder).resolve()
            if real in seen:
                subfolders.clear()
                continue
            seen.add(real)
            for name in names:
                file = Path(folder, name)
                if file.is_symlink() and not file.exists():
                    unreadable.append((file, "link to nothing"))
                else:
                    found.append(file)
        yield from sorted(found)


def _walk_error(error: OSError) -> tuple[Path, str]:
    return Path(error.filename or ""), error.strerror or type(error).__name__


def collect(
    paths: Iterable[Path],
    unreadable: list[tuple[Path, str]],
    progress: Callable[[int, int], None] | None = None,
) -> list[SpooledInstance]:
    """Parse every file's header; files that are not DICOM instances are reported and skipped.

    Only the first bytes of a file are read before it is known to be a Part 10 file, so a large file
    of another kind costs no memory, and anything but a regular file (a pipe, a device) is not read.
    A DICOMDIR (the index of a CD or a USB export) is no instance: the files it lists are read, once
    each, whether or not the folders named hold them too. ``progress(files done, files known)`` is
    called after each file; the folders are listed first, so the second count is known from the
    start and grows only by what a DICOMDIR lists.
    """
    instances: list[SpooledInstance] = []
    queue = list(iter_files(paths, unreadable))
    read: set[Path] = set()
    # A list's iterator also yields what is appended during the loop: the files a DICOMDIR lists.
    for done, path in enumerate(queue, start=1):
        if progress is not None:
            progress(done, len(queue))
        try:
            real = path.resolve()
            if real in read:
                continue
            read.add(real)
            if not stat.S_ISREG(path.stat().st_mode):
                unreadable.append((path, "not a regular file"))
                continue
            with path.open("rb") as file:
                if file.read(PART10_PREAMBLE + len(PART10_MAGIC))[PART10_PREAMBLE:] != PART10_MAGIC:
                    unreadable.append((path, "not a DICOM Part 10 file"))
                    continue
                file.seek(0)
                data = file.read()
            try:
                header = parse_instance(data)
            except NodeError:
                if not is_media_directory(data):
                    raise
                queue.extend(listed_files(path, data))
                continue
        except OSError as error:  # the path is listed beside its reason already
            unreadable.append((path, error.strerror or type(error).__name__))
            continue
        except (NodeError, RuntimeError, ValueError) as error:  # also a link loop, a NUL byte in a name
            unreadable.append((path, str(error) or type(error).__name__))
            continue
        instances.append(SpooledInstance(header=header, path=str(real)))
    return instances


def measure_paths(
    paths: Iterable[Path],
    measurer: StackMeasurer,
    progress: Callable[[str, int, int], None] | None = None,
) -> OfflineRun:
    """Find and measure every short-axis cine stack in the given files and folders.

    ``progress(stage, done, total)`` follows the two slow stages: ``"reading"`` counts files,
    ``"measuring"`` counts stacks.
    """
    run = OfflineRun()
    reading = partial(progress, "reading") if progress is not None else None
    instances = collect(paths, run.unreadable, reading)
    run.instances = len(instances)
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
    if progress is not None:
        progress("measuring", 0, len(plans))  # the bar shows the stage while the first stack runs
    for done, plan in enumerate(plans):
        try:
            run.results.append(measurer.measure(plan, Path("/")).result)
        except NodeError as error:
            run.failed_stacks.append((plan.series_instance_uids, str(error)))
        except Exception as error:  # noqa: BLE001 - one stack's failure must not lose the others'
            run.failed_stacks.append((plan.series_instance_uids, f"{type(error).__name__}: {error}"))
        if progress is not None:
            progress("measuring", done + 1, len(plans))
    return run
