"""Ingest throughput: DCMTK storescu into ``dicomnode serve`` and into DCMTK storescp, same run.

Run as ``python tests/benchmarks/ingest_benchmark.py`` (not collected by pytest). Sends the 700
Sunnybrook instances over one association, then split over N parallel storescu processes (one
association each), into a fresh node (with one receiver process, and with ``--processes``) and a
fresh ``storescp --fork -od DIR`` per run; prints the median instances/s and MB/s of several runs,
the node's ratios to Orthanc, to the no-op pynetdicom handler and to storescp, and the peak resident
memory of the node's process tree while receiving. No assertions: figures depend on the machine and
on whatever else runs on it.

The comparison is not like for like on durability: the node fsyncs every file and its directory
before answering (its index commit is not fsync'd: the spool is the record, re-indexed at start-up);
storescp writes without fsync.

Three more receivers put the figures in context:

- ``pynetdicom, no-op handler``: pynetdicom's own SCP (the library the node's listener is built on),
  TCP_NODELAY, the node's maximum PDU and, as the node runs pynetdicom by default, neither its
  standard logging handlers nor pydicom's warning per non-conformant UID, whose C-STORE handler
  answers Success without looking at the data: the ceiling of any handler on that listener.
- ``the node's listener, no-op sink``: the node's own listener, configured and logging as
  ``dicomnode serve`` runs it (its reactors woken by each message rather than polling), whose sink
  answers Success without storing anything: what the node costs beside its durable work (header
  parse and structural check, spool write and fsyncs, index).
- ``Orthanc``: Debian's Orthanc (``/usr/sbin/Orthanc``), which fsyncs its storage area and its
  SQLite index, when installed (``--no-orthanc`` leaves it out).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import (
    STORESCP,
    SUNNYBROOK,
    NodeServer,
    dcmtk_env,
    free_port,
    receiver_only_env,
    run_echoscu,
    storescu_command,
    sunnybrook_files,
    wait_for,
)


@dataclass(frozen=True)
class Run:
    """One timed transfer."""

    seconds: float
    instances: int
    megabytes: float

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def _send(port: int, files: list[Path], parallel: int) -> float:
    """Wall seconds for ``parallel`` storescu processes to send ``files`` (split evenly) to ``port``."""
    chunks = [files[index::parallel] for index in range(parallel)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            storescu_command(port, chunk),
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    failures = []
    for sender in senders:
        _, stderr = sender.communicate(timeout=600)
        if sender.returncode != 0:
            failures.append(stderr.decode(errors="replace")[-500:])
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError("storescu failed:\n" + "\n".join(failures))
    return elapsed


#: The highest resident memory of a ``dicomnode serve`` process tree seen while receiving, per number of
#: receiver processes (MB), filled by :func:`_into_node`.
PEAK_RSS_MB: dict[int, float] = {}


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (from /proc), in MB."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        for task in tasks:
            try:
                pending.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return total


def _into_node(work: Path, files: list[Path], parallel: int, processes: int) -> float:
    server = NodeServer(
        data_dir=work / "node-data",
        log_path=work / "node.log",
        port=free_port(),
        extra_env={
            **receiver_only_env(),
            "DICOMNODE_DICOM__MAX_ASSOCIATIONS": str(max(32, parallel)),
            "DICOMNODE_DICOM__RECEIVER_PROCESSES": str(processes),
        },
    )
    server.start()
    wait_for(lambda: " ready\n" in server.log_path.read_text(), 60, "every receiver process")
    peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            peak[0] = max(peak[0], _tree_rss_mb(server.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        seconds = _send(server.port, files, parallel)
        stored = server.indexed_count()
    finally:
        sampling.set()
        sampler.join()
        server.stop()
    PEAK_RSS_MB[processes] = max(PEAK_RSS_MB.get(processes, 0.0), peak[0])
    if stored != len(files):
        raise RuntimeError(f"the node indexed {stored} of {len(files)} instances")
    return seconds


def _into_storescp(work: Path, files: list[Path], parallel: int) -> float:
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    command = [STORESCP, "--fork", "-aet", "DICOMNODE", "-od", str(out), str(port)]

    def all_written() -> None:
        # With --fork a child writes the files; make sure all of them are there before stopping.
        wait_for(lambda: sum(1 for _ in out.iterdir()) >= len(files), 60, "storescp's files")

    return _serve_and_send(command, port, files, parallel, work, before_stop=all_written)


#: pynetdicom's SCP with a C-STORE handler that answers Success at once (argv: port, max PDU),
#: without pynetdicom's standard logging handlers, as the node runs it by default.
_NOOP_SCP = """
import socket, sys
import pydicom.config
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

class NoDelay(ThreadedAssociationServer):
    def get_request(self):
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

_config.LOG_HANDLER_LEVEL = "none"
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE  # no warning per UID
ae = AE(ae_title="DICOMNODE")
ae.maximum_pdu_size = int(sys.argv[2])
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.add_supported_context(Verification)
ae.maximum_associations = 32
server = ae.make_server(("127.0.0.1", int(sys.argv[1])),
                        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)], server_class=NoDelay)
server.serve_forever()
"""

#: The node's own listener (:class:`~node.dicom.scp.StorageSCP`, as ``dicomnode serve`` configures it,
#: logging included) with a sink that stores nothing and answers Success (argv: port).
_NOOP_NODE_LISTENER = """
import sys, threading, types
from node.config import Settings
from node.dicom.scp import StorageSCP
from node.logging import configure_logging

class Sink:
    def store(self, data, **_):
        header = types.SimpleNamespace(study_instance_uid="", patient_id="")  # read at DEBUG
        return types.SimpleNamespace(duplicate=False, header=header)

settings = Settings()
configure_logging(settings.logging)
listening = {"host": "127.0.0.1", "port": int(sys.argv[1]), "max_associations": 32}
dicom = settings.dicom.model_copy(update=listening)
StorageSCP(dicom, Sink(), pseudonymise=str).start()
threading.Event().wait()
"""

#: Debian's Orthanc, else one on PATH (None: not installed).
ORTHANC = next(
    (path for path in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(path).is_file()),
    shutil.which("Orthanc"),
)


def _serve_and_send(
    command: list[str],
    port: int,
    files: list[Path],
    parallel: int,
    cwd: Path,
    before_stop: Callable[[], None] | None = None,
) -> float:
    """Start a receiver, wait until it answers C-ECHO, time the send, run ``before_stop``, stop it."""
    with (cwd / "receiver.log").open("ab") as log:
        process = subprocess.Popen(
            command, env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )

    def answers() -> bool:
        if process.poll() is not None:
            log_tail = (cwd / "receiver.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{command[0]} exited before answering C-ECHO:\n{log_tail}")
        return run_echoscu(port).returncode == 0

    try:
        wait_for(answers, 60, "the receiver")
        seconds = _send(port, files, parallel)
        if before_stop is not None:
            before_stop()
        return seconds
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
        process.wait(timeout=30)


def _into_noop_pynetdicom(work: Path, files: list[Path], parallel: int) -> float:
    from node.config import Settings

    max_pdu = Settings().dicom.max_pdu_size
    port = free_port()
    command = [sys.executable, "-c", _NOOP_SCP, str(port), str(max_pdu)]
    return _serve_and_send(command, port, files, parallel, work)


def _into_noop_node_listener(work: Path, files: list[Path], parallel: int) -> float:
    port = free_port()
    command = [sys.executable, "-c", _NOOP_NODE_LISTENER, str(port)]
    return _serve_and_send(command, port, files, parallel, work)


def _into_orthanc(work: Path, files: list[Path], parallel: int) -> float:
    assert ORTHANC is not None
    port = free_port()
    storage = work / "orthanc-storage"
    config = {
        "Name": "benchmark",
        "DicomAet": "DICOMNODE",
        "DicomPort": port,
        "HttpPort": free_port(),
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "StorageCompression": False,
        "SyncStorageArea": True,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    return _serve_and_send([ORTHANC, str(work / "orthanc.json")], port, files, parallel, work)


def _measure(
    target: Callable[[Path, list[Path], int], float], files: list[Path], parallel: int, megabytes: float
) -> Run:
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        return Run(target(work, files, parallel), len(files), megabytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _median(runs: list[Run]) -> Run:
    seconds = statistics.median(run.seconds for run in runs)
    return Run(seconds, runs[0].instances, runs[0].megabytes)


#: What the node's rows are compared with, in the order the ratios are printed.
REFERENCES = ("Orthanc", "pynetdicom, no-op handler", "the node's listener, no-op sink", "storescp -od")


def main() -> None:
    """Run the benchmark and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SUNNYBROOK, help="the Sunnybrook directory")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--parallel", type=int, default=4, help="storescu processes in the parallel case")
    parser.add_argument("--no-orthanc", action="store_true", help="leave Orthanc out")
    parser.add_argument("--processes", type=int, default=4, help="receiver processes of the second node row")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data.resolve()}")
    files = sunnybrook_files(args.data)
    megabytes = sum(path.stat().st_size for path in files) / 1e6

    print(
        f"{len(files)} instances, {megabytes:.1f} MB; {os.cpu_count()} CPUs; "
        f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; median of {args.repeat} runs"
    )
    print(f"{'configuration':<58} {'seconds':>8} {'inst/s':>8} {'MB/s':>7}   runs (s)")
    node = f"dicomnode serve, {args.processes} receiver processes"
    receivers: list[tuple[str, Callable[[Path, list[Path], int], float]]] = [
        ("dicomnode serve, 1 receiver process", functools.partial(_into_node, processes=1)),
        (node, functools.partial(_into_node, processes=args.processes)),
        ("storescp -od", _into_storescp),
        ("pynetdicom, no-op handler", _into_noop_pynetdicom),
        ("the node's listener, no-op sink", _into_noop_node_listener),
    ]
    if ORTHANC is not None and not args.no_orthanc:
        receivers.append(("Orthanc", _into_orthanc))
    for parallel in (1, args.parallel):
        medians = {}
        for name, target in receivers:
            runs = [_measure(target, files, parallel, megabytes) for _ in range(args.repeat)]
            median = medians[name] = _median(runs)
            label = f"{name}, {parallel} association{'s' if parallel > 1 else ''}"
            print(
                f"{label:<58} {median.seconds:>8.2f} {median.instances_per_s:>8.1f} "
                f"{median.mb_per_s:>7.2f}   {', '.join(f'{run.seconds:.2f}' for run in runs)}"
            )
        references = [name for name in REFERENCES if name in medians]
        for name in [name for name in medians if name.startswith("dicomnode")]:
            for reference in references:
                ratio = medians[name].instances_per_s / medians[reference].instances_per_s
                print(f"{'  ' + name + ' / ' + reference:<78} {ratio:>5.2f}")
    for processes, rss in sorted(PEAK_RSS_MB.items()):
        print(
            f"peak RSS of dicomnode serve with {processes} receiver process(es) while receiving: {rss:.0f} MB"
        )
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
