"""Study readiness and versioning with a manual clock: the real node parts, the real model, no sleeps."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from sqlalchemy.exc import OperationalError

from node.app import Node
from node.clock import ManualClock
from node.config import load_settings
from node.domain import Outcome
from node.pipeline.worker import MAX_ATTEMPTS
from node.store import jobs as jobs_module
from node.store.jobs import Job, ResultRow
from tests.pipeline.test_odd_input import phantom_stack
from tests.pipeline.test_stacks import SAX_TILTED
from tests.support import IndexOutage, clear_dicomnode_env

PHASES = 20
#: Four mid-ventricular slices of one series: enough for a stack, quick to segment.
SLICES = range(4, 8)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Node, ManualClock]]:
    clear_dicomnode_env(monkeypatch)
    monkeypatch.setenv("DICOMNODE_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DICOMNODE_STORAGE__MIN_FREE_MB", "1")
    monkeypatch.setenv("DICOMNODE_PIPELINE__STABLE_SECONDS", "10")
    monkeypatch.setenv("DICOMNODE_PIPELINE__MAX_WAIT_SECONDS", "600")
    clock = ManualClock()
    built = Node.build(load_settings(), clock=clock)
    yield built, clock
    built.index.close()


def _subset(sunnybrook: Path) -> list[Path]:
    files = {int(path.stem): path for path in (sunnybrook / "SCD0000101").glob("*.dcm")}
    return [files[s * PHASES + p + 1] for s in SLICES for p in range(PHASES)]


def test_study_is_measured_once_after_the_quiet_period(
    node: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """A study is queued only after STABLE_SECONDS without arrivals, and measured exactly once."""
    built, clock = node
    assembler, worker = built.assembler, built.workers[0]
    for path in _subset(sunnybrook):
        built.ingest.store(path.read_bytes())
        clock.advance(0.1)
    assert assembler.tick() == []
    clock.advance(9.0)
    assert assembler.tick() == [], "queued before the study was quiet for 10 s"
    clock.advance(1.5)
    (job,) = assembler.tick()
    assert job.version == 1
    assert assembler.tick() == [], "a quiet study was queued twice"
    processed = worker.run_once()
    assert processed is not None and processed.id == job.id
    assert worker.run_once() is None
    (result,) = built.queue.results_for_study(job.study_instance_uid)
    assert result.outcome == Outcome.MEASURED
    assert result.version == 1
    assert result.stack_result().slices == len(SLICES)
    assert result.stack_result().phases == PHASES
    assert result.edv_ml > result.esv_ml > 0


def test_late_instance_reopens_the_study_as_a_new_version(
    node: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """An instance arriving after processing yields version 2, which supersedes version 1."""
    built, clock = node
    assembler, worker = built.assembler, built.workers[0]
    files = _subset(sunnybrook)
    late = files.pop(25)  # slice 5, phase 5
    for path in files:
        built.ingest.store(path.read_bytes())
    clock.advance(11)
    (first,) = assembler.tick()
    worker.run_once()
    (v1,) = built.queue.results_for_study(first.study_instance_uid)
    assert "missing_phases" in v1.qc_flags

    assert built.ingest.store(late.read_bytes()).duplicate is False
    assert assembler.tick() == []
    clock.advance(11)
    (second,) = assembler.tick()
    assert second.version == 2
    worker.run_once()
    (current,) = built.queue.results_for_study(first.study_instance_uid)
    assert current.version == 2
    assert "missing_phases" not in current.qc_flags
    everything = built.queue.results_for_study(first.study_instance_uid, include_superseded=True)
    assert sorted((row.version, row.superseded) for row in everything) == [(1, True), (2, False)]


def test_resent_instance_does_not_reopen_a_study(node: tuple[Node, ManualClock], sunnybrook: Path) -> None:
    """Sending an already stored instance again is acknowledged but queues no new version."""
    built, clock = node
    files = _subset(sunnybrook)
    for path in files:
        built.ingest.store(path.read_bytes())
    clock.advance(11)
    assert len(built.assembler.tick()) == 1
    assert built.ingest.store(files[0].read_bytes()).duplicate is True
    clock.advance(11)
    assert built.assembler.tick() == []


def test_a_study_that_keeps_receiving_is_processed_at_the_maximum_wait(
    node: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """A study never quiet for STABLE_SECONDS is still queued MAX_WAIT_SECONDS after its first instance."""
    built, clock = node
    files = _subset(sunnybrook)
    queued = []
    for path in files:
        built.ingest.store(path.read_bytes())
        clock.advance(8.0)  # always under the 10 s quiet period
        queued.extend(built.assembler.tick())
        if queued:
            break
    assert len(queued) == 1
    first_arrival_to_queue = 8.0 * (files.index(path) + 1)
    assert 600 <= first_arrival_to_queue < 600 + 8.0


def test_study_without_short_axis_cine_records_that_outcome(
    node: tuple[Node, ManualClock], sunnybrook: Path
) -> None:
    """A study with only one slice position is recorded as "no short-axis cine found", not an error."""
    built, clock = node
    one_slice = _subset(sunnybrook)[:PHASES]
    for path in one_slice:
        built.ingest.store(path.read_bytes())
    clock.advance(11)
    (job,) = built.assembler.tick()
    built.workers[0].run_once()
    (result,) = built.queue.results_for_study(job.study_instance_uid)
    assert result.outcome == Outcome.NO_SHORT_AXIS_CINE
    assert result.edv_ml is None


def _undecodable(path: Path) -> bytes:
    """The file's instance as JPEG Baseline whose codestream is only start- and end-of-image markers.

    It is well formed enough to be received (nothing in it contradicts Rows and Columns), but no
    decoder can read a picture out of it.
    """
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("decodable_stacks", [1, 0])
def test_a_stack_that_cannot_be_decoded_fails_alone_and_at_once(
    node: tuple[Node, ManualClock], tmp_path: Path, decodable_stacks: int
) -> None:
    """A stack whose pixel data no decoder reads is recorded as failed, with the reason, at the first
    attempt (retrying cannot change it); the study's other stack is still measured and reported."""
    built, clock = node
    study = generate_uid()
    good = phantom_stack(tmp_path / "good", slices=3, phases=4, side=48, study=study)
    bad = phantom_stack(tmp_path / "bad", slices=3, phases=4, side=48, study=study, iop=SAX_TILTED)
    for instance in good[: len(good) * decodable_stacks]:
        built.ingest.store(Path(instance.path).read_bytes())
    for instance in bad:
        built.ingest.store(_undecodable(Path(instance.path)))
    clock.advance(11)
    assert len(built.assembler.tick()) == 1
    assert built.workers[0].run_once() is not None
    assert built.workers[0].run_once() is None, "the job was put back to be retried"
    rows = {row.outcome: row for row in built.queue.results_for_study(study)}
    expected = {Outcome.FAILED, Outcome.MEASURED} if decodable_stacks else {Outcome.FAILED}
    assert set(rows) == {str(outcome) for outcome in expected}
    failed = rows[str(Outcome.FAILED)]
    assert failed.series_instance_uids == (bad[0].header.series_instance_uid,)
    assert failed.details["error"].startswith("cannot decode pixel data")
    if decodable_stacks:
        measured = rows[str(Outcome.MEASURED)]
        assert measured.series_instance_uids == (good[0].header.series_instance_uid,)
        assert measured.stack_result().slices == 3 and measured.stack_result().phases == 4
    states = built.queue.job_states()
    assert states == ({"done": 1} if decodable_stacks else {"failed": 1}), states


def _phantom_files(directory: Path, study: str, slices: int = 3) -> list[bytes]:
    return [
        Path(i.path).read_bytes()
        for i in phantom_stack(directory, slices=slices, phases=4, side=48, study=study)
    ]


def _queued_phantom_study(built: Node, clock: ManualClock, directory: Path) -> Job:
    """A 3-slice phantom study received, quiet for the stable period and queued: its job."""
    study = generate_uid()
    for data in _phantom_files(directory, study):
        built.ingest.store(data)
    clock.advance(11)
    (queued,) = built.assembler.tick()
    return queued


def _quiet_but_the_last(built: Node, clock: ManualClock, directory: Path) -> tuple[str, bytes]:
    """A 4-slice phantom study received but for its last instance, then quiet for the stable period.

    Returns the study's UID and the instance held back.
    """
    study = generate_uid()
    files = _phantom_files(directory, study, slices=4)
    for data in files[:-1]:
        built.ingest.store(data)
    clock.advance(11)
    return study, files[-1]


def test_a_version_finished_after_a_newer_one_was_queued_is_recorded_superseded(
    node: tuple[Node, ManualClock], tmp_path: Path
) -> None:
    """Results of a version that a newer version is already queued behind are stale when recorded:
    they are superseded at once, so they are never published (a second draft at the PACS) nor current."""
    built, clock = node
    study, late = _quiet_but_the_last(built, clock, tmp_path / "stack")
    assert len(built.assembler.tick()) == 1
    running = built.queue.claim("another-worker", clock.now())  # v1 is being measured elsewhere ...
    assert running is not None and running.version == 1
    built.ingest.store(late)  # ... when a late instance reopens the study
    clock.advance(11)
    (second,) = built.assembler.tick()
    assert second.version == 2
    row = ResultRow(
        stack_index=0, outcome=Outcome.MEASURED, series_instance_uids=(), details={"note": "stale"}
    )
    built.queue.complete(running, Outcome.MEASURED, [row], clock.now())  # v1 finishes after v2 was queued
    assert built.queue.results_for_study(study) == [], "a stale version was recorded as current"
    pending = built.queue.next_unpublished()
    assert pending is not None and pending.superseded, "the stale version would be published"

    built.workers[0].run_once()
    everything = built.queue.results_for_study(study, include_superseded=True)
    assert sorted((r.version, r.superseded) for r in everything) == [(1, True), (2, False)]


def test_a_job_whose_process_dies_at_every_attempt_ends_failed_instead_of_a_crash_loop(
    node: tuple[Node, ManualClock], tmp_path: Path
) -> None:
    """A study that kills the node (memory, a crashing library) is retried after each restart, but
    after MAX_ATTEMPTS deaths it is recorded as failed with the reason, and the node stays up."""
    built, clock = node
    queued = _queued_phantom_study(built, clock, tmp_path / "stack")
    dead_run = f"{socket.gethostname()}:{os.getpid()}:run-a-run-that-died:worker-1"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = built.queue.claim(dead_run, clock.now())
        assert claimed is not None and (claimed.id, claimed.attempts) == (queued.id, attempt)
        restarted = Node.build(load_settings(), clock=clock)  # the restart after the crash
        restarted.index.close()
        expected = {"queued": 1} if attempt < MAX_ATTEMPTS else {"failed": 1}
        assert built.queue.job_states() == expected
        failed_count = restarted.metrics.registry.get_sample_value(
            "dicomnode_studies_processed_total", {"outcome": str(Outcome.FAILED)}
        )
        assert (failed_count or 0.0) == (1.0 if attempt == MAX_ATTEMPTS else 0.0)
        clock.advance(61)  # past the retry delay
    assert built.queue.claim("worker", clock.now()) is None
    (result,) = built.queue.results_for_study(queued.study_instance_uid)
    assert result.outcome == Outcome.FAILED
    assert result.details["error"] == f"the node stopped while processing this study, {MAX_ATTEMPTS} times"


def test_an_instance_arriving_while_a_study_is_queued_keeps_it_waiting(
    node: tuple[Node, ManualClock], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that arrives between the readiness check and the queueing (another association
    thread) means the study is no longer quiet: it is not queued until it is quiet again."""
    built, clock = node
    _, late = _quiet_but_the_last(built, clock, tmp_path / "stack")

    def arrival(name: str) -> None:
        if name == "jobs:ready":
            built.ingest.store(late)

    monkeypatch.setattr(jobs_module, "failpoint", arrival)
    assert built.assembler.tick() == []
    monkeypatch.undo()
    clock.advance(11)
    (job,) = built.assembler.tick()
    built.workers[0].run_once()
    (result,) = built.queue.results_for_study(job.study_instance_uid)
    assert result.version == 1 and result.stack_result().slices == 4


def test_a_failed_attempt_is_tried_again_after_the_retry_delay(
    node: tuple[Node, ManualClock], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that fails for a passing reason (here an injected OSError: a real one cannot be
    made to pass on cue) is tried again only after RETRY_SECONDS (default 60), then measured."""
    built, clock = node
    study = _queued_phantom_study(built, clock, tmp_path / "stack").study_instance_uid
    worker = built.workers[0]
    measure = worker.measurer.measure
    failures = iter([OSError("database is locked")])

    def flaky(*args: object, **kwargs: object) -> object:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return measure(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.measurer, "measure", flaky)
    assert worker.run_once() is not None
    assert built.queue.job_states() == {"queued": 1}
    assert worker.run_once() is None, "retried at once"
    clock.advance(59)
    assert worker.run_once() is None, "retried before the delay"
    clock.advance(2)
    retried = worker.run_once()
    assert retried is not None and retried.attempts == 2
    (result,) = built.queue.results_for_study(study)
    assert result.outcome == Outcome.MEASURED


def test_a_job_whose_outcome_the_index_could_not_record_is_put_back_without_a_restart(
    node: tuple[Node, ManualClock], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index goes away once a study is measured, so neither its results nor the failed attempt
    can be recorded. The job must not stay running until the node restarts: once the index is back,
    the worker's next step puts it back (a failed attempt) and, after the retry delay, measures it."""
    built, clock = node
    study = _queued_phantom_study(built, clock, tmp_path / "stack").study_instance_uid
    worker = built.workers[0]
    outage = IndexOutage(built.index.engine)
    measure = worker.measurer.measure
    first = iter([True])

    def index_goes_away(*args: object, **kwargs: object) -> object:
        measured = measure(*args, **kwargs)  # type: ignore[arg-type]
        outage.down = next(first, False)
        return measured

    monkeypatch.setattr(worker.measurer, "measure", index_goes_away)
    with pytest.raises(OperationalError):
        worker.run_once()
    outage.down = False
    assert built.queue.job_states() == {"running": 1}
    assert worker.run_once() is None, "retried before the delay"
    assert built.queue.job_states() == {"queued": 1}
    clock.advance(61)
    retried = worker.run_once()
    assert retried is not None and retried.attempts == 2
    (result,) = built.queue.results_for_study(study)
    assert result.outcome == Outcome.MEASURED
