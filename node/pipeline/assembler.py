"""Study readiness: queue a study version once it is quiet, or has waited long enough."""

from __future__ import annotations

from dataclasses import dataclass

from node.clock import Clock
from node.config import PipelineSettings
from node.logging import Pseudonymiser, get_logger
from node.store.jobs import Job, JobQueue

log = get_logger(__name__)


@dataclass
class Assembler:
    """Turns quiet studies into queued jobs; call :meth:`tick` periodically."""

    queue: JobQueue
    clock: Clock
    settings: PipelineSettings
    pseudonymise: Pseudonymiser

    def tick(self) -> list[Job]:
        """Queue every study that became ready since the last tick."""
        queued = self.queue.enqueue_ready(
            self.clock.now(), self.settings.stable_seconds, self.settings.max_wait_seconds
        )
        for job in queued:
            log.info("study queued", study=self.pseudonymise(job.study_instance_uid), version=job.version)
        return queued
