"""Soak: many studies from parallel senders while the node measures them and delivers the reports.

Run as ``python tests/benchmarks/soak.py [--studies 50] [--senders 4] [--slices 4]`` (not collected
by pytest; the default run takes 10-20 minutes on 2 CPU cores). Builds ``--studies`` distinct studies
in a temporary directory from the Sunnybrook series (``--slices`` mid-ventricular slices x 20 phases
of SCD0000101, SCD0000201, SCD0000301 in turn, pixel data kept, new Study/Series/SOP Instance and
Frame of Reference UIDs and a synthetic PatientID per study), starts ``dicomnode serve`` on a fresh
data directory with a short stable period and a pynetdicom storage SCP as its only destination (the
PACS), then sends the studies from ``--senders`` parallel DCMTK storescu workers: each worker sends
its share study by study, one storescu process (one association) per study, while the node already
processes the earlier ones. It waits (against ``--timeout``) until every study is measured and every
report is delivered, then prints:

* instances/s and MB/s while sending (first send start to last send end);
* studies/hour (first send start to the last draft SR delivered);
* p50/p95/max seconds from a study's last instance received (``studies.last_received_at``) to its
  draft SR delivered (``deliveries.delivered_at``), both as the node recorded them (UTC);
* peak RSS of the node process (VmHWM at the end, and the largest VmRSS sampled every 0.5 s);
* wall times;

and PASS/FAIL checks: every acknowledged instance indexed once and spooled once; every study measured
by exactly one done job with one non-superseded measured result (a second version, when a study's
instances straddled the stable period, is reported: legitimate, not a loss); the PACS received every
outbox object (draft SR + SC per result) exactly once and nothing else. Exits 1 when a check fails
(the work directory is then kept for inspection) and 2 when the data is absent.

``DICOMNODE_PIPELINE__MAX_QUEUED_STUDIES`` is set to studies + 10: beyond that backlog bound (default
200) the node refuses new studies with 0xA700, which would show up here as unacknowledged instances.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pydicom
from pydicom.uid import generate_uid

from tests.delivery.peer import RecordingSCP
from tests.support import (
    SUNNYBROOK,
    SUNNYBROOK_SERIES,
    NodeServer,
    acknowledged_files,
    dcmtk_env,
    free_port,
    storescu_command,
    wait_for,
)

PHASES = 20
DRAFT_SR = "draft_sr"  # outbox.kind of the draft SR (node.pipeline.publish.DRAFT_SR)
RSS_INTERVAL_S = 0.5
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class Study:
    """One generated study: its files (in sending order) and identifiers."""

    number: int
    source_series: str
    study_instance_uid: str
    files: tuple[Path, ...]
    sop_instance_uids: frozenset[str]
    size_bytes: int


@dataclass
class Sent:
    """One storescu run (one association) sending one study."""

    study: Study
    sender: int
    started: float  # monotonic
    ended: float  # monotonic
    returncode: int
    acknowledged: int
    output_tail: str


@dataclass
class RssSampler:
    """Samples VmRSS of a process every ``interval_s`` in a thread; keeps the maximum."""

    pid: int
    interval_s: float = RSS_INTERVAL_S
    peak_kib: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples += 1
            self._stop.wait(self.interval_s)


def proc_status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (None when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


# -- studies -----------------------------------------------------------------------------------------


def series_subset(series_dir: Path, slices: int) -> list[Path]:
    """``slices`` central slices x 20 phases of one series (files are numbered slice-major from 1)."""
    files = {int(path.stem): path for path in series_dir.glob("*.dcm")}
    available = len(files) // PHASES
    if slices > available:
        raise SystemExit(f"{series_dir.name} has {available} slices; --slices {slices} is too many")
    first = (available - slices) // 2
    return [files[s * PHASES + p + 1] for s in range(first, first + slices) for p in range(PHASES)]


def make_studies(data: Path, out: Path, count: int, slices: int) -> list[Study]:
    """Write ``count`` distinct studies under ``out``, cycling through the Sunnybrook series."""
    sources = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Sunnybrook UIDs have leading zeros in components
        for series in SUNNYBROOK_SERIES:
            sources[series] = [pydicom.dcmread(path) for path in series_subset(data / series, slices)]
        studies = []
        for number in range(1, count + 1):
            series = list(SUNNYBROOK_SERIES)[(number - 1) % len(SUNNYBROOK_SERIES)]
            study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
            folder = out / f"study-{number:03d}"
            folder.mkdir(parents=True)
            files, sops, size = [], set(), 0
            for index, dataset in enumerate(sources[series], start=1):
                sop_uid = generate_uid()
                dataset.StudyInstanceUID = study_uid
                dataset.SeriesInstanceUID = series_uid
                dataset.FrameOfReferenceUID = frame_uid
                dataset.SOPInstanceUID = sop_uid
                dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
                dataset.PatientID = f"SOAK{number:04d}"
                dataset.PatientName = f"SOAK^{number:04d}"
                dataset.AccessionNumber = f"SOAK{number:04d}"
                path = folder / f"{index:04d}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                files.append(path)
                sops.add(sop_uid)
                size += path.stat().st_size
            studies.append(Study(number, series, study_uid, tuple(files), frozenset(sops), size))
    return studies


# -- sending -----------------------------------------------------------------------------------------


def send_share(port: int, sender: int, share: list[Study], deadline: float) -> list[Sent]:
    """One sender: its studies one after the other, one storescu association per study."""
    sent = []
    for study in share:
        started = time.monotonic()
        command = storescu_command(port, study.files, calling_ae=f"SOAK{sender}", verbose=True)
        try:
            completed = subprocess.run(
                command,
                env=dcmtk_env(),
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - started),
                check=False,
            )
            output = completed.stdout + completed.stderr
            returncode = completed.returncode
        except subprocess.TimeoutExpired as expired:
            output = f"storescu timed out: {expired}"
            returncode = -1
        ended = time.monotonic()
        sent.append(
            Sent(study, sender, started, ended, returncode, len(acknowledged_files(output)), output[-800:])
        )
    return sent


# -- the index ---------------------------------------------------------------------------------------


def connect(index: Path) -> sqlite3.Connection:
    """A read-only connection to the node's SQLite index."""
    connection = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30)
    connection.row_factory = sqlite3.Row
    return connection


def utc(value: str | None) -> datetime | None:
    """An index timestamp (SQLite stores UTC without an offset) as an aware datetime."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_PROGRESS = """
SELECT
  (SELECT count(*) FROM studies) AS studies,
  (SELECT count(*) FROM studies WHERE pending_since IS NOT NULL) AS pending_studies,
  (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')) AS open_jobs,
  (SELECT count(*) FROM jobs WHERE state = 'done') AS done_jobs,
  (SELECT count(*) FROM results WHERE published = 0) AS unpublished,
  (SELECT count(*) FROM deliveries WHERE state IN ('pending', 'sending')) AS open_deliveries,
  (SELECT count(*) FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
     WHERE o.kind = 'draft_sr' AND d.state = 'delivered') AS draft_srs_delivered
"""


def progress(server: NodeServer) -> dict[str, int]:
    """Counts that say how far the node is, read in one statement (one consistent snapshot)."""
    if not server.index_path.exists():
        return {}
    connection = connect(server.index_path)
    try:
        row = connection.execute(_PROGRESS).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        connection.close()
    return dict(row)


def settled(server: NodeServer, studies: int) -> bool:
    """Every study measured, published and delivered (or finally failed): nothing left to do."""
    if not server.is_running():
        raise RuntimeError(f"dicomnode serve exited:\n{server.log_tail()}")
    counts = progress(server)
    return (
        counts.get("studies") == studies
        and counts["pending_studies"] == 0
        and counts["open_jobs"] == 0
        and counts["unpublished"] == 0
        and counts["open_deliveries"] == 0
    )


def read_index(server: NodeServer) -> dict[str, list[dict[str, Any]]]:
    """The rows the checks and figures need."""
    queries = {
        "instances": "SELECT sop_instance_uid, study_instance_uid FROM instances",
        "studies": "SELECT study_instance_uid, instance_count, last_received_at FROM studies",
        "jobs": "SELECT study_instance_uid, version, state, outcome, attempts FROM jobs",
        "results": "SELECT id, study_instance_uid, version, outcome, superseded, published FROM results",
        "outbox": "SELECT o.sop_instance_uid, o.study_instance_uid, o.result_id, o.kind, "
        "d.destination, d.state, d.attempts, d.delivered_at "
        "FROM outbox o LEFT JOIN deliveries d ON d.outbox_id = o.id",
    }
    connection = connect(server.index_path)
    try:
        connection.execute("BEGIN")
        rows = {name: [dict(row) for row in connection.execute(sql)] for name, sql in queries.items()}
        connection.execute("COMMIT")
    finally:
        connection.close()
    return rows


# -- figures and checks ------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in [0, 1])."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Checks:
    """PASS/FAIL lines, remembered."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {what}{f' ({detail})' if detail else ''}")
        if not ok:
            self.failed.append(what)


def run_checks(
    server: NodeServer, pacs: RecordingSCP, studies: list[Study], sent: list[Sent], rows: dict[str, Any]
) -> Checks:
    checks = Checks()
    total = sum(len(study.files) for study in studies)
    acknowledged = sum(item.acknowledged for item in sent)
    bad_runs = [item for item in sent if item.returncode != 0 or item.acknowledged != len(item.study.files)]
    checks.check(
        not bad_runs and acknowledged == total,
        "every instance sent and acknowledged with Success",
        f"{acknowledged} of {total}; {len(bad_runs)} storescu runs with a failure",
    )
    for item in bad_runs[:3]:
        print(
            f"      study {item.study.number} (sender {item.sender}, rc {item.returncode}): "
            f"{item.output_tail[-300:]!r}"
        )

    sent_sops = {sop for study in studies for sop in study.sop_instance_uids}
    indexed = Counter(row["sop_instance_uid"] for row in rows["instances"])
    twice = sum(1 for count in indexed.values() if count > 1)
    checks.check(
        len(rows["instances"]) == total and set(indexed) == sent_sops and twice == 0,
        "every sent instance indexed exactly once",
        f"{len(rows['instances'])} rows, {len(set(indexed) & sent_sops)} of {total} sent, "
        f"{len(set(indexed) - sent_sops)} unknown, {twice} twice",
    )
    spooled = len(server.spool_files())
    checks.check(spooled == total, "every sent instance spooled once", f"{spooled} files for {total}")

    by_uid = {study.study_instance_uid: study for study in studies}
    study_rows = {row["study_instance_uid"]: row for row in rows["studies"]}
    wrong_counts = [
        uid
        for uid, study in by_uid.items()
        if study_rows.get(uid, {}).get("instance_count") != len(study.files)
    ]
    checks.check(
        set(study_rows) == set(by_uid) and not wrong_counts,
        "every study indexed with all its instances",
        f"{len(set(study_rows) & set(by_uid))} of {len(by_uid)} studies, {len(wrong_counts)} incomplete",
    )

    versions: dict[str, list[dict[str, Any]]] = {uid: [] for uid in by_uid}
    for job in rows["jobs"]:
        versions.setdefault(job["study_instance_uid"], []).append(job)
    not_done = [job for job in rows["jobs"] if job["state"] != "done"]
    no_job = [uid for uid, jobs in versions.items() if not jobs]
    checks.check(
        not not_done and not no_job,
        "every job done",
        f"{len(rows['jobs'])} jobs, {len(not_done)} not done, {len(no_job)} studies without a job",
    )
    for job in not_done[:3]:
        print(f"      {job}")
    reversioned = {uid: len(jobs) for uid, jobs in versions.items() if len(jobs) > 1}
    if reversioned:
        print(
            f"NOTE  {len(reversioned)} studies got more than one version (instances straddled the "
            f"stable period; legitimate, not a loss): "
            + ", ".join(f"study {by_uid[uid].number}: {n}" for uid, n in reversioned.items() if uid in by_uid)
        )

    current: dict[str, list[dict[str, Any]]] = {uid: [] for uid in by_uid}
    for result in rows["results"]:
        if not result["superseded"]:
            current.setdefault(result["study_instance_uid"], []).append(result)
    not_one = {
        uid: [result["outcome"] for result in found]
        for uid, found in current.items()
        if len(found) != 1 or found[0]["outcome"] != "measured"
    }
    checks.check(
        not not_one,
        "every study has exactly one measured, non-superseded result",
        f"{len(by_uid) - len(not_one)} of {len(by_uid)}"
        + (f"; e.g. {next(iter(not_one.values()))}" if not_one else ""),
    )

    outbox = rows["outbox"]
    kinds = Counter((row["result_id"], row["kind"]) for row in outbox)
    current_ids = {found[0]["id"] for found in current.values() if len(found) == 1}
    missing = [rid for rid in current_ids if kinds[(rid, DRAFT_SR)] != 1 or kinds[(rid, "sc")] != 1]
    checks.check(
        not missing,
        "every current result has one draft SR and one SC in the outbox",
        f"{len(outbox)} outbox objects, {len(missing)} results incomplete",
    )
    undelivered = [row for row in outbox if row["state"] != "delivered"]
    checks.check(
        not undelivered,
        "every outbox object delivered to the PACS",
        f"{len(outbox) - len(undelivered)} of {len(outbox)} delivered"
        + (f"; states {dict(Counter(row['state'] for row in undelivered))}" if undelivered else ""),
    )

    received = Counter(pacs.received)
    duplicates = {sop: count for sop, count in received.items() if count > 1}
    expected = {row["sop_instance_uid"] for row in outbox}
    checks.check(not duplicates, "the PACS received no object twice", f"{len(duplicates)} duplicates")
    checks.check(
        set(received) == expected,
        "the PACS received every outbox object and nothing else",
        f"{len(set(received) & expected)} of {len(expected)} outbox objects, "
        f"{len(set(received) - expected)} unknown, {len(pacs.received)} C-STOREs",
    )
    return checks


# -- main --------------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, data: Path, work: Path) -> bool:
    """Generate, send, wait, print figures and checks; True when every check passed."""
    script_started = time.monotonic()
    deadline = script_started + args.timeout
    studies = make_studies(data, work / "studies", args.studies, args.slices)
    generated_s = time.monotonic() - script_started
    instances = sum(len(study.files) for study in studies)
    megabytes = sum(study.size_bytes for study in studies) / 1e6
    max_queued = args.studies + 10

    pacs_port = free_port()
    destinations = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    server = NodeServer(
        data_dir=work / "node-data",
        log_path=work / "node.log",
        port=free_port(),
        extra_env={
            "DICOMNODE_PIPELINE__STABLE_SECONDS": f"{args.stable_seconds:g}",
            "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
            "DICOMNODE_PIPELINE__MAX_QUEUED_STUDIES": str(max_queued),
            "DICOMNODE_DELIVERY__DESTINATIONS": json.dumps(destinations),
            "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
            "DICOMNODE_WEB__ENABLED": "false",
        },
    )
    print(
        f"soak: {args.studies} studies x {args.slices} slices x {PHASES} phases = {instances} instances, "
        f"{megabytes:.1f} MB; {args.senders} senders, one storescu association per study; "
        f"stable period {args.stable_seconds:g} s; max_queued_studies {max_queued}; "
        f"{os.cpu_count()} CPUs; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    pacs = RecordingSCP(port=pacs_port).start()
    try:
        server.start()
        sampler = RssSampler(server.pid).start()
        rss_idle_kib = proc_status_kib(server.pid, "VmRSS") or 0
        try:
            shares = [studies[index :: args.senders] for index in range(args.senders)]
            send_started_utc = datetime.now(UTC)
            send_started = time.monotonic()
            with ThreadPoolExecutor(max_workers=args.senders) as pool:
                futures = [
                    pool.submit(send_share, server.port, number, share, deadline)
                    for number, share in enumerate(shares, start=1)
                    if share
                ]
                sent = [item for future in futures for item in future.result()]
            send_s = max(item.ended for item in sent) - send_started
            print(f"sent in {send_s:.1f} s; waiting for the node to measure and deliver", flush=True)

            last_report = [time.monotonic()]

            def done() -> bool:
                if time.monotonic() - last_report[0] >= PROGRESS_EVERY_S:
                    last_report[0] = time.monotonic()
                    counts = progress(server)
                    print(
                        f"  {time.monotonic() - send_started:6.0f} s: {counts.get('done_jobs', 0)} jobs "
                        f"done, {counts.get('draft_srs_delivered', 0)} of {args.studies} draft SRs delivered",
                        flush=True,
                    )
                return settled(server, args.studies)

            wait_for(done, max(1.0, deadline - time.monotonic()), "every study measured and delivered", 0.2)
            settled_s = time.monotonic() - send_started
            hwm_kib = proc_status_kib(server.pid, "VmHWM") or 0
            rows = read_index(server)
        finally:
            sampler.stop()
            server.stop()
    finally:
        pacs.stop()

    last_received = {row["study_instance_uid"]: utc(row["last_received_at"]) for row in rows["studies"]}
    current = {row["id"] for row in rows["results"] if not row["superseded"] and row["outcome"] == "measured"}
    delivered: dict[str, datetime] = {}
    for row in rows["outbox"]:
        at = utc(row["delivered_at"])
        if row["kind"] == DRAFT_SR and row["result_id"] in current and at is not None:
            delivered[row["study_instance_uid"]] = at
    latencies = [
        (delivered[uid] - last).total_seconds()
        for uid, last in last_received.items()
        if last is not None and uid in delivered
    ]

    def line(label: str, value: str) -> None:
        print(f"{label:<64} {value:>10}")

    print()
    line("figure", "value")
    line("sending: instances/s (first send start to last send end)", f"{instances / send_s:.1f}")
    line("sending: MB/s", f"{megabytes / send_s:.2f}")
    line("sending: seconds", f"{send_s:.1f}")
    per_study = statistics.median(item.ended - item.started for item in sent)
    line("sending: median seconds per study (one association)", f"{per_study:.2f}")
    if delivered:
        span = (max(delivered.values()) - send_started_utc).total_seconds()
        line(
            "studies/hour (first send start to last draft SR delivered)",
            f"{len(delivered) / span * 3600:.0f}",
        )
        line("  over seconds", f"{span:.1f}")
    if latencies:
        for name, value in (
            ("p50", percentile(latencies, 0.5)),
            ("p95", percentile(latencies, 0.95)),
            ("max", max(latencies)),
        ):
            line(f"last instance received -> draft SR delivered: {name} s", f"{value:.1f}")
        line("  studies with a delivered draft SR", str(len(latencies)))
    line("node RSS after start-up, MiB", f"{rss_idle_kib / 1024:.0f}")
    line("node peak RSS (VmHWM at the end), MiB", f"{hwm_kib / 1024:.0f}")
    sampled = f"node peak RSS (max VmRSS of {sampler.samples} samples every {RSS_INTERVAL_S} s), MiB"
    line(sampled, f"{sampler.peak_kib / 1024:.0f}")
    line("wall: generating the studies, s", f"{generated_s:.1f}")
    line("wall: first send start to everything delivered, s", f"{settled_s:.1f}")
    line("wall: whole run, s", f"{time.monotonic() - script_started:.1f}")
    levels = Counter(str(record.get("level")) for record in server.log_records())
    print(f"node log: {levels['error'] + levels['critical']} error, {levels['warning']} warning records")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    checks = run_checks(server, pacs, studies, sent, rows)
    if checks.failed:
        print(f"\n{len(checks.failed)} checks failed; node log tail:\n{server.log_tail(20)}")
        return False
    print("\nall checks passed")
    return True


def main() -> None:
    """Parse the options, run the soak in a temporary directory, exit 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SUNNYBROOK, help="the Sunnybrook directory")
    parser.add_argument("--studies", type=int, default=50, help="distinct studies to send")
    parser.add_argument("--senders", type=int, default=4, help="parallel storescu senders")
    parser.add_argument("--slices", type=int, default=4, help="slices per study (x 20 phases)")
    parser.add_argument("--stable-seconds", type=float, default=2.0, help="the node's quiet period")
    parser.add_argument("--timeout", type=float, default=3600.0, help="deadline for the whole run (s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (kept on failure)")
    args = parser.parse_args()
    data = args.data.resolve()
    missing = [series for series in SUNNYBROOK_SERIES if not (data / series).is_dir()]
    if missing:
        print(
            f"no Sunnybrook data at {data} (missing {', '.join(missing)}); nothing to send", file=sys.stderr
        )
        sys.exit(2)
    if args.studies < 1 or args.senders < 1 or args.slices < 1:
        sys.exit("--studies, --senders and --slices must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="dicomnode-soak-"))
    passed = False
    try:
        passed = soak(args, data, work)
    finally:
        if passed and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", flush=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
