"""Receiver processes: ``DICOM__RECEIVER_PROCESSES`` DICOM listeners on one port, supervised by ``serve``.

One Python process receives with one GIL, so a second association adds nothing to a single
listener's throughput. With more than one receiver, ``dicomnode serve`` starts that many processes
(spawned, not forked: the node holds threads and ONNX Runtime by then). Each binds the DICOM port
with SO_REUSEPORT, so the kernel spreads new connections over them, and stores through an ingest of
its own on the shared spool and index: the same checks, fsync and index before every answer. The
pipeline, delivery and the web app stay in the ``serve`` process.

Limits across processes: associations in all and per calling AE title are counted in shared memory
(:mod:`node.dicom.shared`); the in-flight memory budget (``MAX_INFLIGHT_MB``) is split evenly; the
caps on connections still negotiating hold per process. A receiver that dies is logged and started
again (its shared counts cleared first); SIGTERM stops every receiver within the grace period, then
kills what is left; a receiver is killed by the kernel when ``serve`` dies without stopping it (a
SIGKILL, an OOM kill). Receivers send their counters to ``serve``, whose ``/metrics`` shows them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Mapping
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

from prometheus_client import Counter

from node.clock import SystemClock, monotonic
from node.config import Settings
from node.dicom.scp import StorageSCP
from node.dicom.shared import SharedAssociations
from node.dicom.tls import server_context
from node.logging import Pseudonymiser, configure_logging, get_logger
from node.metrics import NodeMetrics

log = get_logger(__name__)

#: How often a receiver sends its counters, and the supervisor looks at its receivers.
TICK_S = 0.5
#: How long a receiver may take to start listening.
START_TIMEOUT_S = 60.0
#: The counters a receiver keeps: (metric family, label), as NodeMetrics names them.
_RELAYED = ("dicomnode_associations", "dicomnode_instances_received", "dicomnode_nonconformant_uids")


def effective_processes(configured: int) -> int:
    """Receiver processes to run: the setting, or for 0 the number of cores, at most 4."""
    return configured if configured > 0 else max(1, min(4, os.cpu_count() or 1))


def _counter_values(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in metrics.registry.collect():
        if family.name not in _RELAYED:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[(family.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _relay(metrics: NodeMetrics, out: Any, stopped: threading.Event) -> None:
    """Send the growth of this receiver's counters to ``serve`` every :data:`TICK_S`."""
    sent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    while True:
        last = stopped.wait(TICK_S)
        now = _counter_values(metrics)
        grown = {key: value - sent.get(key, 0.0) for key, value in now.items() if value > sent.get(key, 0.0)}
        if grown:
            out.put(grown)
            sent = now
        if last:
            return


def _end_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``serve`` dies, however it dies (a SIGKILL or an OOM
    kill leaves it no time to stop its receivers): an orphan receiver would keep answering on the
    port with nobody to supervise it."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot tie the receiver's life to serve's", errno=ctypes.get_errno())
    if os.getppid() != parent:  # serve died before the tie was made
        os._exit(1)


def receiver_main(
    settings: Settings,
    number: int,
    shared: SharedAssociations,
    ready: Event,
    counters: Any,
    parent: int,
) -> None:
    """One receiver process: a listener on the shared port until SIGTERM or SIGINT (or serve's end)."""
    _end_with_parent(parent)
    from node.signals import StopSignals
    from node.store.index import Index
    from node.store.ingest import Ingest, IngestLimits
    from node.store.spool import Spool

    configure_logging(settings.logging)
    data_dir = settings.storage.data_dir
    processes = shared.processes
    dicom = settings.dicom.model_copy(
        update={"max_inflight_mb": max(1, settings.dicom.max_inflight_mb // processes)}
    )
    with StopSignals() as signals:
        index = Index.open(settings.storage.effective_database_url(), durable_commits=False)
        ingest = Ingest(Spool(data_dir / "spool"), index, SystemClock(), IngestLimits.from_settings(settings))
        metrics = NodeMetrics()
        pseudonymise = Pseudonymiser.from_key_file(data_dir / "log-key")
        scp = StorageSCP(dicom, ingest, pseudonymise, metrics, shared=(shared, number))
        scp.start()
        stopped = threading.Event()
        relay = threading.Thread(target=_relay, args=(metrics, counters, stopped), name="metrics-relay")
        relay.start()
        ready.set()
        signals.wait()
        scp.stop(settings.dicom.shutdown_grace_s)
        stopped.set()
        relay.join(timeout=5)
        ingest.close()
        index.close()


class ReceiverProcesses:
    """Starts, watches and stops the receiver processes of one node.

    ``port`` is the DICOM port they share: the configured one, or for port 0 one the kernel picks,
    held by a socket bound (but not listening) here for as long as the receivers run.
    """

    def __init__(self, settings: Settings, processes: int, metrics: NodeMetrics) -> None:
        # The plain Settings class (whatever loaded it), so that it can be sent to a new process.
        self._settings = Settings.model_construct(
            **{name: getattr(settings, name) for name in Settings.model_fields}
        )
        if settings.dicom.tls:
            server_context(settings.dicom)  # an unusable certificate, key or CA stops serve here
        self._context = multiprocessing.get_context("spawn")
        self._shared = SharedAssociations(self._context, processes)
        self._counters: Any = self._context.Queue()
        self._metrics = metrics
        self._processes: list[SpawnProcess | None] = [None] * processes
        self._stopping = threading.Event()
        self._watched = threading.Event()
        self._watcher: threading.Thread | None = None
        self._holder: socket.socket | None = None
        self.port = settings.dicom.port
        self.restarts = 0

    @property
    def count(self) -> int:
        """How many receiver processes run."""
        return len(self._processes)

    def pids(self) -> list[int]:
        """Process ids of the running receivers."""
        return [process.pid for process in self._processes if process is not None and process.pid]

    def start(self) -> None:
        """Start every receiver and wait until each listens (raise when one cannot)."""
        host = self._settings.dicom.host
        holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, self.port))
        self._holder = holder
        self.port = int(holder.getsockname()[1])
        settings = self._settings.model_copy(
            update={"dicom": self._settings.dicom.model_copy(update={"port": self.port})}
        )
        self._settings = settings
        started = [self._spawn(number) for number in range(self.count)]
        for number, ready in enumerate(started):
            self._await(number, ready)
        self._watcher = threading.Thread(target=self._watch, name="receivers", daemon=True)
        self._watcher.start()
        log.info("receiver processes listening", processes=self.count, port=self.port)

    def _spawn(self, number: int) -> Event:
        ready = self._context.Event()
        process = self._context.Process(
            target=receiver_main,
            args=(self._settings, number, self._shared, ready, self._counters, os.getpid()),
            name=f"dicomnode-receiver-{number}",
            daemon=True,
        )
        process.start()
        self._processes[number] = process
        return ready

    def _await(self, number: int, ready: Event) -> None:
        """Wait until a receiver listens. One stopped by SIGTERM or SIGINT meanwhile (the whole
        process group is being stopped, as systemd and Ctrl-C do) is no failure: ``serve`` stops too."""
        process = self._processes[number]
        assert process is not None
        deadline = monotonic() + START_TIMEOUT_S
        while not ready.wait(0.1):
            if not process.is_alive() and process.exitcode in (-signal.SIGTERM, -signal.SIGINT):
                log.info("receiver process stopped while starting", receiver=number)
                return
            if not process.is_alive() or monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"receiver process {number} did not start (exit code {process.exitcode})")

    def _watch(self) -> None:
        """Apply the receivers' counters to /metrics; start a dead receiver again.

        Runs until every receiver has stopped: a receiver it started is tied to this thread's life
        (PR_SET_PDEATHSIG follows the thread that started a process), so it must outlive them.
        """
        while not self._watched.is_set():
            self._drain(TICK_S)
            for number, process in enumerate(self._processes):
                if process is None or process.is_alive() or self._stopping.is_set():
                    continue
                held = self._shared.clear(number)
                log.error(
                    "receiver process died: starting it again",
                    receiver=number,
                    exit_code=process.exitcode,
                    associations_lost=held,
                )
                self.restarts += 1
                try:
                    self._await(number, self._spawn(number))
                except RuntimeError:
                    log.exception("receiver process could not be started again", receiver=number)
                    time.sleep(1.0)

    def _drain(self, wait_s: float) -> None:
        try:
            grown = self._counters.get(timeout=wait_s)
        except queue.Empty:
            return
        while True:
            self._apply(grown)
            try:
                grown = self._counters.get_nowait()
            except queue.Empty:
                return

    def _apply(self, grown: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        counters: dict[str, Counter] = {
            "dicomnode_associations": self._metrics.associations,
            "dicomnode_instances_received": self._metrics.instances_received,
            "dicomnode_nonconformant_uids": self._metrics.nonconformant_uids,
        }
        for (name, labels), amount in grown.items():
            counter = counters[name]
            (counter.labels(**dict(labels)) if labels else counter).inc(amount)

    def stop(self, grace_s: float) -> None:
        """SIGTERM every receiver; those still running after ``grace_s`` (plus a second) are killed."""
        self._stopping.set()  # no receiver is started again from here on
        running = [process for process in self._processes if process is not None and process.is_alive()]
        for process in running:
            process.terminate()
        deadline = monotonic() + grace_s + 1.0
        for process in running:
            process.join(timeout=max(0.0, deadline - monotonic()))
        for process in running:
            if process.is_alive():
                log.warning("receiver process did not stop in time: killed", pid=process.pid)
                process.kill()
                process.join(timeout=5)
        self._watched.set()
        if self._watcher is not None:
            self._watcher.join(timeout=START_TIMEOUT_S)
        for late in self._processes:  # one being started again as the stop began
            if late is not None and late.is_alive() and late not in running:
                late.kill()
                late.join(timeout=5)
        self._drain(0.0)
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        log.info("receiver processes stopped", processes=len(running))
