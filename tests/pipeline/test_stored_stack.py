"""The measured stack travels with its result: reports and the verified picture are built from what the
worker measured, whatever arrives in the study later, and a console sign-off reaches the PACS the
running node serves. ``dicomnode serve`` with DCMTK peers (storescu in, storescp as the PACS)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from node.clock import SystemClock
from node.store.index import Index
from node.store.ingest import Ingest, IngestLimits
from node.store.spool import Spool
from tests.support import (
    STORESCP,
    NodeServer,
    dcmtk_env,
    dicomnode_command,
    free_port,
    port_accepts,
    run_storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.data]

PHASES = 20
PASSWORD = "a long and unguessable passphrase"
DONE = ".done"


class Pacs:
    """DCMTK storescp on a free port, storing into a folder. storescp writes each file under its final
    name as it receives it, so it is told to mark every file it has finished (``<file>.done``, from
    its exec-on-reception hook); only marked files are read."""

    def __init__(self, folder: Path) -> None:
        if not Path(STORESCP).exists():
            pytest.skip("DCMTK storescp is not installed (apt-get install dcmtk)")
        self.folder = folder
        self.folder.mkdir()
        self.port = free_port()
        self.process = subprocess.Popen(
            [STORESCP, "-aet", "PACS", "-od", str(folder), "-xcr", f"touch '#p/#f{DONE}'", str(self.port)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_accepts(self.port), 20, "storescp to listen")

    @property
    def destination(self) -> str:
        return json.dumps([{"ae_title": "PACS", "host": "127.0.0.1", "port": self.port}])

    def received(self) -> list[pydicom.Dataset]:
        finished = sorted(marker.with_suffix("") for marker in self.folder.glob(f"*{DONE}"))
        return [pydicom.dcmread(path, stop_before_pixels=True) for path in finished]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    started = Pacs(tmp_path / "pacs")
    yield started
    started.stop()


def _slices(sunnybrook: Path, slices: range) -> list[Path]:
    files = {int(path.stem): path for path in (sunnybrook / "SCD0000101").glob("*.dcm")}
    return [files[s * PHASES + p + 1] for s in slices for p in range(PHASES)]


def _node(root: Path, pacs: Pacs, **extra: str) -> NodeServer:
    return NodeServer(
        data_dir=root / "data",
        log_path=root / "node.log",
        port=free_port(),
        extra_env={
            "DICOMNODE_DELIVERY__DESTINATIONS": pacs.destination,
            "DICOMNODE_PIPELINE__STABLE_SECONDS": "2",
            "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
            "DICOMNODE_DELIVERY__POLL_SECONDS": "0.2",
            "DICOMNODE_WEB__ENABLED": "false",
            **extra,
        },
    )


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dicomnode`` from a shell that knows the data folder and nothing of the node's destinations."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOMNODE_")}
    env.update({"DICOMNODE_STORAGE__DATA_DIR": str(data_dir), "DICOMNODE_LOGGING__LEVEL": "ERROR"})
    return subprocess.run(
        [*dicomnode_command(), *args],
        env=env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_result_whose_study_grew_after_it_was_measured_still_gets_its_reports(
    tmp_path: Path, pacs: Pacs, sunnybrook: Path
) -> None:
    """Slices arriving after measurement (the node down before it built the picture) do not keep the
    result's reports from being built on the stack it was measured on."""
    first = _node(tmp_path, pacs, DICOMNODE_FAILPOINT="publisher:partial").start()
    sent = run_storescu(first.port, _slices(sunnybrook, range(4, 8)))
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: not first.is_running(), 300, "the node to stop after its first report object")

    # A fifth slice arrives for the study (received as the node would, into its spool and index).
    index = Index.open(f"sqlite:///{first.index_path}")
    try:
        ingest = Ingest(Spool(first.spool_dir), index, SystemClock(), IngestLimits(min_free_bytes=0))
        for path in _slices(sunnybrook, range(8, 9)):
            ingest.store(path.read_bytes())
    finally:
        index.close()

    again = _node(tmp_path, pacs, DICOMNODE_PIPELINE__STABLE_SECONDS="3600").start()
    try:
        wait_for(lambda: len(pacs.received()) >= 2, 120, "the draft SR and the picture at the PACS")
    finally:
        again.stop()
    assert sorted(str(ds.Modality) for ds in pacs.received()) == ["OT", "SR"]
    assert not again.log_events("the images of a result can no longer be read")


def test_a_sign_off_from_any_shell_reaches_the_destinations_of_the_running_node(
    tmp_path: Path, pacs: Pacs, sunnybrook: Path
) -> None:
    """``dicomnode worklist sign`` run where DICOMNODE_DELIVERY__DESTINATIONS is unset: the running
    node sends the VERIFIED SR and the verified picture to its PACS."""
    node = _node(tmp_path, pacs).start()
    try:
        sent = run_storescu(node.port, _slices(sunnybrook, range(4, 8)))
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(pacs.received()) >= 2, 300, "the draft SR and the picture at the PACS")
        added = _cli(
            node.data_dir,
            *("users", "add", "jsmith", "--role", "radiologist", "--full-name", "Smith^Jane"),
            *("--organization", "St Elsewhere", "--password-stdin"),
        )
        assert added.returncode == 0, added.stderr
        listed = _cli(node.data_dir, "worklist", "list", "--json")
        (row,) = json.loads(listed.stdout)
        signed = _cli(
            node.data_dir, "worklist", "sign", row["result_id"], "--user", "jsmith", "--password-stdin"
        )
        assert signed.returncode == 0, signed.stderr
        wait_for(lambda: len(pacs.received()) >= 4, 120, "the verified SR and picture at the PACS")
    finally:
        node.stop()
    reports = [ds for ds in pacs.received() if ds.Modality == "SR"]
    assert sorted(str(ds.VerificationFlag) for ds in reports) == ["UNVERIFIED", "VERIFIED"]
    assert sorted(str(ds.Modality) for ds in pacs.received()) == ["OT", "OT", "SR", "SR"]
