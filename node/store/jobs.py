"""The job queue and result records, in the index, so that a crash at any point resumes cleanly.

A job is one version of one study. Claiming is a single UPDATE (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several node processes never get the same job); results are written in the same
transaction that marks the job done, so a job is either finished with all its results or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from node.domain import JobState, Outcome, StackGrid, StackResult
from node.failpoints import failpoint
from node.store import claims
from node.store.index import Index
from node.store.results import ResultRecord, result_columns, unmeasured_columns
from node.store.schema import jobs, results, studies

QUEUED = JobState.QUEUED
RUNNING = JobState.RUNNING
DONE = JobState.DONE
FAILED = JobState.FAILED


@dataclass(frozen=True)
class Job:
    """A job; ``claimant`` holds it (running), None while it is queued."""

    id: int
    study_instance_uid: str
    version: int
    attempts: int
    claimant: str | None = None


#: A result without a stored grid: SQL NULL (a column added to an older index) or JSON null.
_WITHOUT_GRID = or_(results.c.grid.is_(None), cast(results.c.grid, String) == "null")


class ClaimLost(Exception):
    """The job is no longer this claimant's: its lease ran out and another node took it over.

    Nothing of this attempt is recorded; the node that holds the job now records its outcome.
    """


def _held_by(job: Job) -> Any:
    """The condition that ``job`` is still as its holder left it: running under its claim, or queued."""
    if job.claimant is None:
        return and_(jobs.c.id == job.id, jobs.c.state == QUEUED)
    return and_(jobs.c.id == job.id, jobs.c.state == RUNNING, jobs.c.claimed_by == job.claimant)


@dataclass(frozen=True)
class ResultRow:
    """One result to record with a finished job."""

    stack_index: int
    outcome: Outcome
    series_instance_uids: tuple[str, ...]
    #: Why nothing was measured (``{"error": ...}``, ``{"skipped": ...}``); empty for a measurement.
    details: dict[str, Any] = field(default_factory=dict)
    #: The measurement, for outcome measured.
    result: StackResult | None = None
    labels_path: str | None = None
    grid: StackGrid | None = None


class JobQueue:
    """Queue operations over the index's ``jobs``, ``studies`` and ``results`` tables."""

    def __init__(self, index: Index, retry_delay: timedelta = timedelta(0)) -> None:
        """``retry_delay``: how long a job whose attempt failed waits before it is claimed again."""
        self._engine = index.engine
        self._retry_delay = retry_delay

    def enqueue_ready(self, now: datetime, stable_seconds: float, max_wait_seconds: float) -> list[Job]:
        """Queue a new version of every study that is quiet (or has waited long enough).

        A study is ready when it has instances not covered by a job (``pending_since`` set) and no
        instance arrived for ``stable_seconds``, or its first pending instance arrived
        ``max_wait_seconds`` ago.
        """
        quiet = now - timedelta(seconds=stable_seconds)
        waited = now - timedelta(seconds=max_wait_seconds)
        with self._engine.connect() as connection:
            ready = connection.execute(
                select(studies.c.study_instance_uid, studies.c.pending_since).where(
                    studies.c.pending_since.is_not(None),
                    or_(studies.c.last_received_at <= quiet, studies.c.pending_since <= waited),
                )
            ).all()
        queued: list[Job] = []
        for study_uid, pending_since in ready:
            failpoint("jobs:ready")
            try:
                with self._engine.begin() as connection:
                    cleared = connection.execute(
                        update(studies)
                        .where(
                            studies.c.study_instance_uid == study_uid,
                            studies.c.pending_since == pending_since,
                            # Again here: an instance may have arrived since the select above.
                            or_(studies.c.last_received_at <= quiet, studies.c.pending_since <= waited),
                        )
                        .values(pending_since=None)
                    )
                    if cleared.rowcount != 1:
                        continue  # another process queued it, or an instance just arrived
                    version = 1 + int(
                        connection.execute(
                            select(func.coalesce(func.max(jobs.c.version), 0)).where(
                                jobs.c.study_instance_uid == study_uid
                            )
                        ).scalar_one()
                    )
                    job_id = connection.execute(
                        insert(jobs)
                        .values(
                            study_instance_uid=study_uid,
                            version=version,
                            state=QUEUED,
                            attempts=0,
                            queued_at=now,
                        )
                        .returning(jobs.c.id)
                    ).scalar_one()
                queued.append(Job(id=int(job_id), study_instance_uid=study_uid, version=version, attempts=0))
            except IntegrityError:
                continue  # the same version was queued concurrently elsewhere
        return queued

    def claim(self, worker_id: str, now: datetime, lease: timedelta = timedelta(minutes=2)) -> Job | None:
        """Atomically take the oldest queued job whose study has no job running.

        A job tried before (its last claim time is kept) waits the retry delay after that claim, so
        that a passing problem (a locked database, memory taken by another study) gets time to pass
        before the attempts run out.
        """
        running = jobs.alias("running")
        candidate = (
            select(jobs.c.id)
            .where(
                jobs.c.state == QUEUED,
                or_(jobs.c.claimed_at.is_(None), jobs.c.claimed_at <= now - self._retry_delay),
                ~exists().where(
                    and_(
                        running.c.study_instance_uid == jobs.c.study_instance_uid,
                        running.c.state == RUNNING,
                    )
                ),
            )
            .order_by(jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self._engine.begin() as connection:
            row = connection.execute(
                update(jobs)
                .where(jobs.c.id == candidate, jobs.c.state == QUEUED)
                .values(
                    state=RUNNING,
                    claimed_by=worker_id,
                    claimed_at=now,
                    lease_until=now + lease,
                    attempts=jobs.c.attempts + 1,
                )
                .returning(jobs.c.id, jobs.c.study_instance_uid, jobs.c.version, jobs.c.attempts)
            ).first()
        if row is None:
            return None
        return Job(
            id=int(row[0]),
            study_instance_uid=str(row[1]),
            version=int(row[2]),
            attempts=int(row[3]),
            claimant=worker_id,
        )

    def complete(
        self, job: Job, outcome: Outcome, rows: list[ResultRow], now: datetime, error: str | None = None
    ) -> list[str]:
        """Record a job's results and mark it done, superseding older versions' results, atomically.

        A job whose outcome is failed ends in state failed, with ``error`` as the job's last error.
        Returns the new result ids.

        Raises
        ------
        ClaimLost
            Another node took the job over (this one's lease ran out); nothing is recorded.
        """
        ids = [str(uuid.uuid4()) for _ in rows]
        with self._engine.begin() as connection:
            finished = connection.execute(
                update(jobs)
                .where(_held_by(job))
                .values(
                    state=FAILED if outcome == Outcome.FAILED else DONE,
                    outcome=str(outcome),
                    finished_at=now,
                    error=error,
                )
            )
            if finished.rowcount == 0:
                raise ClaimLost(f"job {job.id} is no longer held by {job.claimant}")
            # A newer version queued, running or done makes these results stale at birth: they are
            # recorded superseded, so they are neither published nor shown as current.
            newer = connection.execute(
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.study_instance_uid == job.study_instance_uid, jobs.c.version > job.version)
            ).scalar_one()
            for result_id, row in zip(ids, rows, strict=True):
                values = (
                    result_columns(row.result)
                    if row.result is not None
                    else unmeasured_columns(row.series_instance_uids, row.details)
                )
                connection.execute(
                    insert(results).values(
                        id=result_id,
                        job_id=job.id,
                        study_instance_uid=job.study_instance_uid,
                        version=job.version,
                        stack_index=row.stack_index,
                        outcome=str(row.outcome),
                        **values,
                        labels_path=row.labels_path,
                        grid=row.grid.to_json() if row.grid is not None else None,
                        superseded=newer > 0,
                        published=False,
                        created_at=now,
                    )
                )
            connection.execute(
                update(results)
                .where(
                    results.c.study_instance_uid == job.study_instance_uid, results.c.version < job.version
                )
                .values(superseded=True)
            )
        return ids

    def fail(self, job: Job, error: str, max_attempts: int, now: datetime) -> bool:
        """Record a failed attempt: requeue it, or after ``max_attempts`` finish it as failed.

        Returns True when the job is finally failed (a "failed" result row is then recorded).
        """
        if job.attempts < max_attempts:
            with self._engine.begin() as connection:
                requeued = connection.execute(
                    update(jobs)
                    .where(_held_by(job))
                    .values(state=QUEUED, error=error, claimed_by=None, lease_until=None)
                )
            if requeued.rowcount == 0:
                raise ClaimLost(f"job {job.id} is no longer held by {job.claimant}")
            return False
        row = ResultRow(
            stack_index=0, outcome=Outcome.FAILED, series_instance_uids=(), details={"error": error}
        )
        self.complete(job, Outcome.FAILED, [row], now, error=error)
        return True

    def requeue_abandoned(
        self,
        is_abandoned: Callable[[str], bool],
        max_attempts: int,
        now: datetime,
        reason: str = "the node stopped while processing this study",
    ) -> tuple[int, int]:
        """Put back running jobs whose claimant ``is_abandoned`` (its process was killed, say).

        A job abandoned in each of ``max_attempts`` attempts is finished as failed instead, with
        ``reason`` as its error: a study that kills the node (memory, a crashing library) must not
        keep it in a crash loop. Returns the number of jobs put back and of jobs failed.
        """
        released = claims.release_abandoned(
            self._engine, jobs, claimed=RUNNING, released=QUEUED, is_abandoned=is_abandoned
        )
        return self._fail_exhausted(released, max_attempts, now, reason)

    def requeue_expired(
        self,
        max_attempts: int,
        now: datetime,
        reason: str = "the node processing this study stopped renewing its claim",
    ) -> tuple[int, int]:
        """Put back running jobs whose lease ran out (their node died, on any host); as
        :meth:`requeue_abandoned`, a job that ran out of attempts so is finished as failed."""
        released = claims.release_expired(self._engine, jobs, claimed=RUNNING, released=QUEUED, now=now)
        return self._fail_exhausted(released, max_attempts, now, reason)

    def renew(self, claimant_prefix: str, until: datetime) -> int:
        """Extend the lease of the jobs this process is running (see :func:`claims.renew`)."""
        return claims.renew(self._engine, jobs, claimed=RUNNING, claimant_prefix=claimant_prefix, until=until)

    def _fail_exhausted(
        self, released: int, max_attempts: int, now: datetime, reason: str
    ) -> tuple[int, int]:
        with self._engine.connect() as connection:
            exhausted = connection.execute(
                select(jobs.c.id, jobs.c.study_instance_uid, jobs.c.version, jobs.c.attempts).where(
                    jobs.c.state == QUEUED, jobs.c.attempts >= max_attempts
                )
            ).all()
        for job_id, study_uid, version, attempts in exhausted:
            job = Job(
                id=int(job_id), study_instance_uid=str(study_uid), version=int(version), attempts=attempts
            )
            self.fail(job, f"{reason}, {attempts} times", max_attempts, now)
        return max(0, released - len(exhausted)), len(exhausted)

    def results_for_study(
        self, study_instance_uid: str, include_superseded: bool = False
    ) -> list[ResultRecord]:
        """Result rows of a study, newest version first."""
        query = select(results).where(results.c.study_instance_uid == study_instance_uid)
        if not include_superseded:
            query = query.where(results.c.superseded.is_(False))
        with self._engine.connect() as connection:
            rows = (
                connection.execute(query.order_by(results.c.version.desc(), results.c.stack_index))
                .mappings()
                .all()
            )
        return [ResultRecord.from_row(row) for row in rows]

    def result(self, result_id: str) -> ResultRecord | None:
        """One result row by id."""
        with self._engine.connect() as connection:
            row = connection.execute(select(results).where(results.c.id == result_id)).mappings().first()
        return ResultRecord.from_row(row) if row is not None else None

    def next_unpublished(self) -> ResultRecord | None:
        """The oldest result whose reports are not yet in the outbox."""
        with self._engine.connect() as connection:
            row = (
                connection.execute(
                    select(results)
                    .where(results.c.published.is_(False))
                    .order_by(results.c.created_at, results.c.id)
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return ResultRecord.from_row(row) if row is not None else None

    def measured_without_grid(self) -> list[ResultRecord]:
        """Measured results an older node recorded without their stack's grid (upgrade)."""
        with self._engine.connect() as connection:
            rows = (
                connection.execute(
                    select(results).where(results.c.outcome == str(Outcome.MEASURED), _WITHOUT_GRID)
                )
                .mappings()
                .all()
            )
        return [ResultRecord.from_row(row) for row in rows]

    def set_grid(self, result_id: str, grid: StackGrid) -> None:
        """Store the grid of a result recorded without it."""
        with self._engine.begin() as connection:
            connection.execute(
                update(results).where(results.c.id == result_id, _WITHOUT_GRID).values(grid=grid.to_json())
            )

    def mark_published(self, result_id: str) -> None:
        """Record that a result's reports are in the outbox (or that it has none to send)."""
        with self._engine.begin() as connection:
            connection.execute(update(results).where(results.c.id == result_id).values(published=True))

    def job_states(self) -> dict[str, int]:
        """Number of jobs per state."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        return {str(state): int(count) for state, count in rows}
