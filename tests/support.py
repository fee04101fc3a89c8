"""Helpers shared by tests and benchmarks: a ``dicomnode serve`` subprocess, DCMTK runners, waiting.

Everything that waits does so by polling against a deadline; nothing sleeps "long enough".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom.dsutils import split_dataset
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
SUNNYBROOK = SHARED_DATA / "sunnybrook"
#: The three Sunnybrook cine series and how many instances each holds.
SUNNYBROOK_SERIES = {"SCD0000101": 240, "SCD0000201": 260, "SCD0000301": 200}

#: Always the DCMTK tools: pynetdicom installs a ``storescu`` of its own that shadows DCMTK's on PATH.
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
STORESCP = "/usr/bin/storescp"

_POLL_S = 0.05
_T = TypeVar("_T")


def wait_for(predicate: Callable[[], _T], timeout_s: float, what: str, poll_s: float = _POLL_S) -> _T:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Debian's DCMTK leaves Nagle on unless TCP_NODELAY is set."""
    return {**os.environ, "TCP_NODELAY": "1"}


def sunnybrook_files(root: Path) -> list[Path]:
    """Every instance of the three Sunnybrook series, series by series, in a stable order."""
    files: list[Path] = []
    for series in SUNNYBROOK_SERIES:
        files.extend(sorted((root / series).glob("*.dcm"), key=lambda p: (len(p.name), p.name)))
    return files


def file_dataset_bytes(path: Path) -> bytes:
    """A file's dataset bytes, split where pynetdicom splits it when streaming a file."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def synthetic_mr() -> bytes:
    """A small, whole MR image (16 x 16, 16 bit) with no patient data, as Part 10 bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.FrameOfReferenceUID = generate_uid()
    dataset.Modality = "MR"
    dataset.PatientID = "SYNTHETIC"
    dataset.SeriesNumber = 7
    dataset.InstanceNumber = 3
    dataset.TriggerTime = 41.5
    dataset.ImagePositionPatient = [-120.0, -80.5, 33.25]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.PixelSpacing = [1.25, 1.25]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = 16
    dataset.Columns = 16
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = bytes(range(256)) * 2
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- DCMTK -----------------------------------------------------------------------------------------

_SENDING = re.compile(r"Sending file: (?P<path>.+?)\s*$")
_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")


def acknowledged_files(verbose_output: str) -> list[Path]:
    """Files that ``storescu -v`` saw acknowledged with Success, in sending order."""
    acknowledged: list[Path] = []
    current: Path | None = None
    for line in verbose_output.splitlines():
        sending = _SENDING.search(line)
        if sending:
            current = Path(sending.group("path"))
            continue
        response = _RESPONSE.search(line)
        if response and current is not None:
            if response.group("status").strip() == "Success":
                acknowledged.append(current)
            current = None
    return acknowledged


def storescu_command(
    port: int,
    files: Iterable[Path],
    called_ae: str = "DICOMNODE",
    calling_ae: str = "STORESCU",
    verbose: bool = False,
) -> list[str]:
    """A DCMTK storescu command line sending ``files`` over one association to 127.0.0.1."""
    command = [STORESCU, "-aet", calling_ae, "-aec", called_ae]
    if verbose:
        command.append("-v")
    return [*command, "127.0.0.1", str(port), *(str(path) for path in files)]


def run_storescu(
    port: int, files: Iterable[Path], timeout_s: float = 180.0, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK storescu to completion (TCP_NODELAY=1) and return its outcome."""
    return subprocess.run(
        storescu_command(port, files, **options),
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_echoscu(
    port: int, calling_ae: str = "ECHOSCU", called_ae: str = "DICOMNODE", timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK echoscu once and return its outcome."""
    return subprocess.run(
        [ECHOSCU, "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


# -- the node as a subprocess ------------------------------------------------------------------------


def receiver_only_env() -> dict[str, str]:
    """Settings that keep the pipeline (when the node has one) from picking up received studies.

    For tests and benchmarks of receipt alone: a study would otherwise be measured once it has been
    quiet for the stable period, competing for the CPU with the transfer being measured.
    """
    from node.config import Settings

    pipeline = Settings.model_fields.get("pipeline")
    fields = getattr(pipeline.annotation, "model_fields", {}) if pipeline is not None else {}
    quiet = {"stable_seconds": "86400", "max_wait_seconds": "86400"}
    return {f"DICOMNODE_PIPELINE__{key.upper()}": value for key, value in quiet.items() if key in fields}


def dicomnode_command() -> list[str]:
    """The ``dicomnode`` console script of this interpreter's environment (else ``python -m``)."""
    script = Path(sys.executable).parent / "dicomnode"
    if script.exists():
        return [str(script)]
    found = shutil.which("dicomnode")
    return [found] if found else [sys.executable, "-m", "node.cli"]


@dataclass
class NodeServer:
    """``dicomnode serve`` in its own process group, on 127.0.0.1, logging JSON lines to a file.

    Settings come from the environment only: host, port, data directory and JSON logs are set here,
    ``extra_env`` adds or overrides any other ``DICOMNODE_*`` variable.
    """

    data_dir: Path
    log_path: Path
    port: int
    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    #: A command line the server runs under (``unshare ...``), ending where ``dicomnode serve`` follows.
    wrapper: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The server's full environment (no inherited ``DICOMNODE_*`` settings)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("DICOMNODE_")}
        env.update(
            {
                "DICOMNODE_DICOM__HOST": "127.0.0.1",
                "DICOMNODE_DICOM__PORT": str(self.port),
                "DICOMNODE_STORAGE__DATA_DIR": str(self.data_dir),
                "DICOMNODE_STORAGE__MIN_FREE_MB": "64",
                "DICOMNODE_LOGGING__FORMAT": "json",
                "DICOMNODE_LOGGING__LEVEL": "INFO",
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def index_path(self) -> Path:
        """The default SQLite index inside the data directory."""
        return self.data_dir / "index.sqlite3"

    @property
    def spool_dir(self) -> Path:
        """Root of the spool."""
        return self.data_dir / "spool"

    @property
    def pid(self) -> int:
        """Process id (also the process group id) of the running server."""
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.pid

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> NodeServer:
        """Start the server and wait until its port accepts connections."""
        if self.is_running():
            raise RuntimeError("server already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, *dicomnode_command(), "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals reach it and nothing else
            )
        try:
            wait_for(self._ready, self.start_timeout_s, f"dicomnode serve on port {self.port}")
        except BaseException:
            self.kill9()
            raise
        return self

    def _ready(self) -> bool:
        if not self.is_running():
            raise RuntimeError(f"dicomnode serve exited early:\n{self.log_tail()}")
        return port_accepts(self.port)

    def kill9(self) -> int | None:
        """SIGKILL the whole process group and reap the server; return its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM the server, wait for it to exit and return its exit code."""
        if self.process is None:
            raise RuntimeError("server not started")
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise

    def restart(self) -> NodeServer:
        """Start again on the same data directory and port (after kill9 or terminate).

        What is left of the previous process group (receiver processes of a serve that killed itself
        die a moment after it) is killed and waited for first: one still holding the DICOM port would
        answer the readiness check for a node that has not yet reconciled its spool."""
        if self.is_running():
            self.terminate()
        if self.process is not None:
            group = self.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)

            def group_gone() -> bool:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    return True
                return False

            wait_for(group_gone, 30, "the previous server's processes to exit")
        return self.start()

    def stop(self) -> None:
        """Teardown: SIGTERM and wait, SIGKILL when it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate(timeout_s=30.0)

    # -- inspection -------------------------------------------------------------------------------

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (other lines are skipped)."""
        if not self.log_path.exists():
            return []
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The log records whose ``event`` is ``event``."""
        return [record for record in self.log_records() if record.get("event") == event]

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def indexed_count(self) -> int:
        """Rows in the index's ``instances`` table (0 before the index exists); read-only access."""
        if not self.index_path.exists():
            return 0
        try:
            connection = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True, timeout=5)
        except sqlite3.OperationalError:
            return 0
        try:
            row = connection.execute("SELECT count(*) FROM instances").fetchone()
        except sqlite3.OperationalError:  # created but no table yet
            return 0
        finally:
            connection.close()
        return int(row[0])

    def spool_path_of(self, sent: Path) -> Path:
        """Where the node keeps the instance of the file ``sent``."""
        from node.store.spool import safe_component

        header = pydicom.dcmread(sent, stop_before_pixels=True)
        return (
            self.spool_dir
            / safe_component(str(header.StudyInstanceUID))
            / safe_component(str(header.SeriesInstanceUID))
            / (safe_component(str(header.SOPInstanceUID)) + ".dcm")
        )

    def spool_files(self) -> list[Path]:
        """Every finished ``.dcm`` file in the spool."""
        if not self.spool_dir.exists():
            return []
        return sorted(path for path in self.spool_dir.rglob("*.dcm") if ".incoming" not in path.parts)


def clear_dicomnode_env(monkeypatch: Any) -> None:
    """Remove every ``DICOMNODE_*`` variable for one test, so settings start from the defaults."""
    for key in list(os.environ):
        if key.startswith("DICOMNODE_"):
            monkeypatch.delenv(key)


class IndexOutage:
    """While ``down`` is set, the index's engine refuses every statement as a database gone away does.

    The real database stays up: a real outage cannot be started and ended between two statements of
    one step, so the refusal is raised where the driver would raise it (before the cursor executes).
    """

    def __init__(self, engine: Engine) -> None:
        self.down = False
        event.listen(engine, "before_cursor_execute", self._refuse)

    def _refuse(self, *_args: object) -> None:
        if self.down:
            raise OperationalError("index statement", None, ConnectionError("the index is unreachable"))


def write_large_mr(path: Path, megabytes: int) -> Path:
    """A multi-frame MR instance of about ``megabytes`` MB (512 x 512, 16 bit frames), written to ``path``."""
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    frames = max(1, megabytes * 2)  # 512 * 512 * 2 bytes = 0.5 MB a frame
    dataset.Rows = dataset.Columns = 512
    dataset.NumberOfFrames = frames
    dataset.PixelData = bytes(512 * 512 * 2 * frames)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.save_as(path, enforce_file_format=True)
    return path


def series_counts(index: Any) -> dict[str, int]:
    """Number of indexed instances per Series Instance UID (straight from the index's table)."""
    with index.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT series_instance_uid, count(*) FROM instances GROUP BY series_instance_uid"
        ).all()
    return {str(uid): int(count) for uid, count in rows}


def send_concurrently(
    port: int, groups: Sequence[Sequence[Path]], timeout_s: float = 300.0, options: Sequence[str] = ()
) -> list[str]:
    """Run one ``storescu -v`` per group of files, all at once, each over its own association with its
    own calling AE title (``SENDER<n>``); return their outputs in order."""
    senders = [
        subprocess.Popen(
            [*storescu_command(port, files, calling_ae=f"SENDER{n}", verbose=True), *options],
            env=dcmtk_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n, files in enumerate(groups)
    ]
    return [sender.communicate(timeout=timeout_s)[0] for sender in senders]
