"""Pipeline worker: claim a job, find the study's stacks, measure each, record the results.

Runs on worker threads, never on an association thread. Every output is written durably before the
job is marked done, so a crash at any point leaves the job to be resumed, never half-recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from node.clock import Clock, monotonic
from node.domain import Outcome
from node.errors import NodeError
from node.failpoints import failpoint
from node.logging import Pseudonymiser, get_logger
from node.metrics import NodeMetrics
from node.pipeline.grid import stored_grid
from node.pipeline.measure import StackMeasurer
from node.pipeline.stacks import find_sax_stacks
from node.store.index import Index
from node.store.jobs import ClaimLost, Job, JobQueue, ResultRow
from node.store.labels import encode_labels
from node.store.spool import Spool, safe_component

log = get_logger(__name__)

#: Attempts before a job whose processing keeps failing is recorded as failed.
MAX_ATTEMPTS = 3


@dataclass
class PipelineWorker:
    """Processes queued jobs one at a time."""

    index: Index
    queue: JobQueue
    measurer: StackMeasurer
    spool_root: Path
    results_spool: Spool
    clock: Clock
    pseudonymise: Pseudonymiser
    worker_id: str
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    #: How long a claim holds unless the node's lease keeper renews it.
    lease: timedelta = timedelta(minutes=2)
    #: Set from a claim until its outcome is recorded. Still set at the next step when recording
    #: failed (the index unreachable, say), so that step first puts back the job still claimed
    #: under this worker's id.
    _holding: bool = field(default=False, init=False)

    def run_once(self) -> Job | None:
        """Claim and process one job; None when the queue had nothing to run."""
        if self._holding:
            self._release_unrecorded(self.clock.now())
        self._holding = True  # from the claim: a claim's commit can succeed although its call fails
        job = self.queue.claim(self.worker_id, self.clock.now(), self.lease)
        if job is None:
            self._holding = False
            return None
        study = self.pseudonymise(job.study_instance_uid)
        try:
            try:
                self._process(job, study)
            except ClaimLost:
                raise
            except Exception as error:
                final = self.queue.fail(
                    job, f"{type(error).__name__}: {error}", MAX_ATTEMPTS, self.clock.now()
                )
                if final:
                    self.metrics.studies_processed.labels(outcome=str(Outcome.FAILED)).inc()
                log.exception("job failed", study=study, version=job.version, final=final)
        except ClaimLost:
            # This node's lease ran out (it stalled) and another node took the study over.
            log.warning("study taken over by another node: this attempt is not recorded", study=study)
        self._holding = False
        return job

    def _release_unrecorded(self, now: datetime) -> None:
        """Put back the job whose outcome the index could not record: it counts as a failed attempt.

        Between steps this worker holds no job, so whatever is still claimed under its id is that one.
        """
        requeued, failed = self.queue.requeue_abandoned(
            lambda claimant: claimant == self.worker_id,
            MAX_ATTEMPTS,
            now,
            reason="the outcome of this study could not be recorded",
        )
        self._holding = False
        if failed:
            self.metrics.studies_processed.labels(outcome=str(Outcome.FAILED)).inc(failed)
        if requeued or failed:
            log.warning("job outcome could not be recorded: job put back", requeued=requeued, failed=failed)

    def _process(self, job: Job, study: str) -> None:
        instances = self.index.study_instances(job.study_instance_uid)
        search = find_sax_stacks(instances, root=self.spool_root)
        if not search.stacks:
            row = ResultRow(
                stack_index=0,
                outcome=Outcome.NO_SHORT_AXIS_CINE,
                series_instance_uids=(),
                details={"skipped": search.skipped},
            )
            self.queue.complete(job, Outcome.NO_SHORT_AXIS_CINE, [row], self.clock.now())
            self.metrics.studies_processed.labels(outcome=str(Outcome.NO_SHORT_AXIS_CINE)).inc()
            log.info("no short-axis cine found", study=study, version=job.version, skipped=search.skipped)
            return
        rows = []
        for stack_index, plan in enumerate(search.stacks):
            started = monotonic()
            try:
                measured = self.measurer.measure(plan, self.spool_root)
            except NodeError as error:
                # This stack's own data (pixels no decoder reads, say): the same on every attempt, so
                # it is recorded as failed now, and the study's other stacks are still measured.
                reason = str(error) or type(error).__name__
                rows.append(
                    ResultRow(
                        stack_index=stack_index,
                        outcome=Outcome.FAILED,
                        series_instance_uids=plan.series_instance_uids,
                        details={"error": reason},
                    )
                )
                log.warning(
                    "stack not measured",
                    study=study,
                    version=job.version,
                    stack_index=stack_index,
                    error=reason,
                )
                continue
            self.metrics.inference_seconds.observe(monotonic() - started)
            relative = Path(safe_component(job.study_instance_uid), f"job{job.id}-stack{stack_index}.npz")
            self.results_spool.write(relative, encode_labels(measured.labels))
            rows.append(
                ResultRow(
                    stack_index=stack_index,
                    outcome=Outcome.MEASURED,
                    series_instance_uids=plan.series_instance_uids,
                    result=measured.result,
                    labels_path=relative.as_posix(),
                    grid=stored_grid(plan),
                )
            )
            result = measured.result
            log.info(
                "stack measured",
                study=study,
                version=job.version,
                stack_index=stack_index,
                slices=result.slices,
                phases=result.phases,
                edv_ml=round(result.edv_ml, 1),
                esv_ml=round(result.esv_ml, 1),
                ef_pct=round(result.ef_pct, 1),
                qc_flags=list(result.qc_flags),
                confidence=round(result.confidence, 3),
            )
        failpoint("worker:measured")
        outcome = Outcome.MEASURED if any(row.outcome == Outcome.MEASURED for row in rows) else Outcome.FAILED
        self.queue.complete(job, outcome, rows, self.clock.now())
        self.metrics.studies_processed.labels(outcome=str(outcome)).inc()
