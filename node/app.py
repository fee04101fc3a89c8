"""Application wiring: build every part from one ``Settings`` and run until a signal arrives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from pydicom.dataset import Dataset

from node import __version__
from node.accounts.tokens import TokenStore
from node.background import BackgroundLoops, Step
from node.clock import Clock, SystemClock, monotonic
from node.config import Destination, Settings
from node.delivery.sender import DeliverySender
from node.dicom.scp import StorageSCP
from node.dicom.tls import DeliveryTLS
from node.dicomweb.stow import StowIngest
from node.domain import Outcome
from node.errors import ConfigError
from node.inference.runner import load_segmenter
from node.logging import Pseudonymiser, get_logger
from node.metrics import NodeMetrics
from node.pipeline.assembler import Assembler
from node.pipeline.grid import backfill_grids
from node.pipeline.measure import StackMeasurer
from node.pipeline.publish import Publisher
from node.pipeline.worker import MAX_ATTEMPTS, PipelineWorker
from node.receivers import ReceiverProcesses, effective_processes
from node.reports.codes import ReviewStatus
from node.reports.labels import LabelClasses
from node.reports.sr import derived_uid
from node.review.parts import ReviewParts
from node.review.service import VerifiedPicture, person_name
from node.signals import StopSignals
from node.store.claims import claimant_id, claimant_is_dead
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.jobs import JobQueue
from node.store.leases import LeaseKeeper
from node.store.outbox import Outbox
from node.store.results import backfill_qc_status
from node.store.reviews import ReviewRecord
from node.store.spool import Spool
from node.web.server import WebServer, index_reachable

log = get_logger(__name__)


def _verified_picture(publisher: Publisher) -> VerifiedPicture:
    def picture(review: ReviewRecord) -> Dataset | None:
        amended = (
            (review.edv_ml, review.esv_ml)
            if review.edv_ml is not None and review.esv_ml is not None
            else None
        )
        return publisher.verified_secondary_capture(
            review.result_id,
            observer_name=person_name(review.full_name),
            verified_at=review.reviewed_at,
            review=ReviewStatus(review.status),
            amended=amended,
            sop_instance_uid=derived_uid(review.result_id, "verified-sc", review.id),
            series_instance_uid=derived_uid(review.result_id, "verified-sc-series", review.id),
        )

    return picture


def _worker_step(worker: PipelineWorker) -> Step:
    def step() -> bool:
        return worker.run_once() is not None

    return step


@dataclass
class Node:
    """The running node's parts."""

    settings: Settings
    index: Index
    ingest_index: Index
    spool: Spool
    ingest: Ingest
    queue: JobQueue
    outbox: Outbox
    #: The DICOM listener: in this process (one receiver), or several receiver processes.
    scp: StorageSCP | None
    receivers: ReceiverProcesses | None
    assembler: Assembler
    workers: list[PipelineWorker]
    publisher: Publisher
    sender: DeliverySender
    loops: BackgroundLoops
    metrics: NodeMetrics
    review: ReviewParts
    web: WebServer | None

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None) -> Node:
        """Create the data directory, open the index, load the model and prepare every service."""
        clock = clock or SystemClock()
        metrics = NodeMetrics()
        data_dir = settings.storage.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            spool = Spool(data_dir / "spool")
            spool.check_writable()
        except OSError as error:
            raise ConfigError(
                f"DICOMNODE_STORAGE__DATA_DIR: {data_dir} is not writable "
                f"({error.strerror or type(error).__name__}); give the node a folder it can write"
            ) from None
        removed = spool.clear_incoming()
        if removed:
            log.info("removed unacknowledged partial files", count=removed)
        index = Index.open(settings.storage.effective_database_url())
        pseudonymise = Pseudonymiser.from_key_file(data_dir / "log-key")
        # The ingest's own engine commits without an fsync (the fsync'd spool file is the record; see
        # create_index_engine); everything else keeps fsync'd commits.
        ingest_index = Index.open(settings.storage.effective_database_url(), durable_commits=False)
        ingest = Ingest(spool, ingest_index, clock, IngestLimits.from_settings(settings))
        indexed, quarantined = ingest.reconcile(data_dir / "quarantine")
        if indexed or quarantined:
            log.warning("spool files the index lacked", indexed=indexed, quarantined=quarantined)
        waiting = index.restart_quiet_periods(clock.now())
        if waiting:
            log.info("studies that were receiving wait one quiet period", studies=waiting)
        processes = effective_processes(settings.dicom.receiver_processes)
        scp = StorageSCP(settings.dicom, ingest, pseudonymise, metrics) if processes == 1 else None
        receivers = ReceiverProcesses(settings, processes, metrics) if processes > 1 else None

        segmenter = load_segmenter(settings.inference)
        log.info(
            "model loaded",
            model=segmenter.card.name,
            version=segmenter.card.version,
            providers=segmenter.providers,
        )
        measurer = StackMeasurer(segmenter, settings.inference.basal_rule)
        queue = JobQueue(index, timedelta(seconds=settings.pipeline.retry_seconds))
        lease = timedelta(seconds=settings.storage.claim_lease_seconds)
        statuses = backfill_qc_status(index)
        if statuses:
            log.info("results of an older node given the QC status their flags give", results=statuses)
        backfilled, lost = backfill_grids(queue, index, spool.root)
        if backfilled or lost:
            log.info(
                "results of an older node given their stack's grid", results=backfilled, without_stack=lost
            )
        requeued, given_up = queue.requeue_abandoned(claimant_is_dead, MAX_ATTEMPTS, clock.now())
        outbox = Outbox(index, Spool(data_dir / "outbox"))
        released = outbox.release_abandoned(claimant_is_dead)
        if requeued or released:
            log.info("resumed work of a stopped process", jobs=requeued, deliveries=released)
        if given_up:
            metrics.studies_processed.labels(outcome=str(Outcome.FAILED)).inc(given_up)
            log.error("jobs failed: the node stopped while processing them at every attempt", jobs=given_up)
        results_spool = Spool(data_dir / "results")
        workers = [
            PipelineWorker(
                index=index,
                queue=queue,
                measurer=measurer,
                spool_root=spool.root,
                results_spool=results_spool,
                clock=clock,
                pseudonymise=pseudonymise,
                worker_id=claimant_id(f"worker-{number}"),
                metrics=metrics,
                lease=lease,
            )
            for number in range(settings.pipeline.workers)
        ]
        assembler = Assembler(queue, clock, settings.pipeline, pseudonymise)
        publisher = Publisher(
            index=index,
            queue=queue,
            outbox=outbox,
            spool_root=spool.root,
            results_root=results_spool.root,
            classes=LabelClasses.from_card(segmenter.card),
            destinations=settings.delivery.destinations,
            send_seg=settings.reports.send_seg,
            clock=clock,
            pseudonymise=pseudonymise,
        )
        uses_tls = any(
            isinstance(destination, Destination) and destination.tls
            for destination in settings.delivery.destinations
        )
        sender = DeliverySender(
            outbox=outbox,
            settings=settings.delivery,
            calling_ae_title=settings.delivery.calling_ae_title or settings.dicom.ae_title,
            clock=clock,
            claimant=claimant_id("sender"),
            metrics=metrics,
            lease=lease,
            tls=DeliveryTLS(settings.dicom) if uses_tls else None,
            probe_tls=DeliveryTLS(settings.dicom) if uses_tls else None,
            dicomweb_ca=settings.dicom.tls_ca,
        )
        loops = BackgroundLoops(min(settings.pipeline.poll_seconds, settings.delivery.poll_seconds))
        loops.add("assembler", lambda: bool(assembler.tick()))
        for number, worker in enumerate(workers):
            loops.add(f"worker-{number}", _worker_step(worker))
        loops.add("publisher", publisher.run_once)
        loops.add("sender", lambda: sender.run_once() > 0)
        loops.add("dead-letters", lambda: sender.probe_dead_letters() > 0)
        loops.add("leases", LeaseKeeper(queue, outbox, clock, lease, MAX_ATTEMPTS, metrics).step)
        review = ReviewParts.build(
            settings, index, outbox, metrics, verified_picture=_verified_picture(publisher)
        )
        review.service.publish_pending(clock.now())
        loops.add(
            "reviews",
            lambda: (
                review.service.publish_pending(clock.now()) + review.service.publish_pictures(clock.now()) > 0
            ),
        )
        readiness = {"index": index_reachable(index), "model": lambda: bool(segmenter.providers)}
        stow = StowIngest(
            sink=ingest,
            tokens=TokenStore(index),
            audit=review.audit,
            metrics=metrics,
            max_request_bytes=settings.web.stow_max_request_mb * 1024 * 1024,
            max_instance_bytes=settings.dicom.max_instance_mb * 1024 * 1024,
            requests=asyncio.Semaphore(settings.web.stow_max_requests),
        )
        web = (
            WebServer.build(
                settings, review, metrics, clock, readiness, classes=segmenter.card.output.classes, stow=stow
            )
            if settings.web.enabled
            else None
        )
        return cls(
            settings=settings,
            index=index,
            ingest_index=ingest_index,
            spool=spool,
            ingest=ingest,
            queue=queue,
            outbox=outbox,
            scp=scp,
            receivers=receivers,
            assembler=assembler,
            workers=workers,
            publisher=publisher,
            sender=sender,
            loops=loops,
            metrics=metrics,
            review=review,
            web=web,
        )

    def start(self) -> None:
        """Start the background loops and the worklist, then the listener; then say, once, where
        everything is (:meth:`banner`, on stdout)."""
        self.loops.start()
        if self.web is not None:
            self.web.start()
        if self.receivers is not None:
            self.receivers.start()
        elif self.scp is not None:
            self.scp.start()
        print(self.banner(), flush=True)

    @property
    def dicom_port(self) -> int:
        """The port DICOM listens on (the one picked, for port 0)."""
        if self.receivers is not None:
            return self.receivers.port
        assert self.scp is not None
        return self.scp.port

    def banner(self) -> str:
        """What an administrator needs at start-up: where DICOM, the worklist and STOW-RS listen,
        whether anyone can sign in or send yet, and where results go."""
        settings = self.settings
        dicom = settings.dicom
        tls = "TLS" if dicom.tls_cert is not None else "no TLS"
        lines = [
            f"dicomnode {__version__} ready",
            f"  DICOM        AE title {dicom.ae_title} on {dicom.host}:{self.dicom_port} ({tls})"
            + (f", {self.receivers.count} receiver processes" if self.receivers is not None else ""),
        ]
        if self.web is not None:
            host = settings.web.host if settings.web.host not in ("0.0.0.0", "::") else "localhost"
            lines.append(f"  Worklist     http://{host}:{self.web.port}/")
            tokens = [token for token in TokenStore(self.index).all() if token.active]
            senders = (
                f"{len(tokens)} sender token(s)"
                if tokens
                else "no sender token yet: `dicomnode tokens add NAME`"
            )
            lines.append(f"  STOW-RS      http://{host}:{self.web.port}/dicomweb/studies ({senders})")
        else:
            lines.append("  Worklist     off (DICOMNODE_WEB__ENABLED=false)")
        users = [user for user in self.review.accounts.users.all() if not user.disabled]
        if users:
            lines.append(f"  Users        {len(users)} active")
        else:
            lines.append(
                "  Users        none yet: add a radiologist with `dicomnode users add NAME "
                '--role radiologist --full-name "Family^Given" --organization "Hospital" --password-stdin`'
            )
        destinations = settings.delivery.destinations
        if destinations:
            shown = ", ".join(d.key for d in destinations)
            lines.append(f"  Destinations {shown}")
        else:
            lines.append(
                "  Destinations none: results stay on the worklist (DICOMNODE_DELIVERY__DESTINATIONS)"
            )
        return "\n".join(lines)

    def stop(self) -> None:
        """Stop accepting, finish in-flight work within the grace period, close the index."""
        deadline = monotonic() + self.settings.dicom.shutdown_grace_s
        if self.receivers is not None:
            self.receivers.stop(max(0.0, deadline - monotonic()))
        elif self.scp is not None:
            self.scp.stop(max(0.0, deadline - monotonic()))
        self.loops.stop(max(0.0, deadline - monotonic()))
        if self.web is not None:
            self.web.stop(max(0.0, deadline - monotonic()))
        self.ingest.close()
        self.index.close()
        self.ingest_index.close()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully (see :mod:`node.signals`)."""
        with StopSignals() as signals:
            self.start()
            received = signals.wait()
            log.info("stop requested", signal=received.name)
            self.stop()
