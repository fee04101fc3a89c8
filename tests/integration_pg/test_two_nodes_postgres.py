"""Two ``dicomnode serve`` processes on one PostgreSQL index and one data directory.

A throwaway PostgreSQL server (Debian's ``postgresql`` package) runs in a temporary directory on a
free port, as the ``postgres`` OS user when the test runs as root (PostgreSQL refuses root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    STORESCP,
    SUNNYBROOK_SERIES,
    NodeServer,
    dcmtk_env,
    dicomnode_command,
    free_port,
    storescu_command,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.data]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_NAME = "dicomnode"


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: its port, socket directory and SQLAlchemy URL."""

    port: int
    socket_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DB_NAME}"


def _as_postgres_user() -> list[str]:
    """Command prefix running as the ``postgres`` OS user when we are root, else nothing."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and runuser is absent: PostgreSQL refuses to run as root")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' OS user to run PostgreSQL as")
    return [runuser, "-u", "postgres", "--"]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """Initialise, start and finally stop and remove a PostgreSQL 15 server in a temporary directory.

    The directory is a fresh one in the system temp dir (not pytest's, which is private to root),
    owned by the ``postgres`` user when the test runs as root.
    """
    for tool in ("initdb", "pg_ctl", "createdb"):
        if not (PG_BIN / tool).exists():
            pytest.skip(f"{PG_BIN / tool} absent (install the Debian 'postgresql' package)")
    pytest.importorskip("psycopg", reason="psycopg absent (pip install 'dicomnode[postgres]')")
    prefix = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
    pgdata, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    if prefix:
        for path in (root, socket_dir):
            shutil.chown(path, "postgres", "postgres")
    port = free_port()
    pg_ctl = [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(pgdata)]
    try:
        _run(
            [
                *prefix,
                str(PG_BIN / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )
        options = f"-p {port} -k {socket_dir} -h 127.0.0.1 -F -c max_connections=200"
        _run([*pg_ctl, "-o", options, "-l", str(root / "server.log"), "-w", "start"])
        try:
            _run(
                [
                    *prefix,
                    str(PG_BIN / "createdb"),
                    "-h",
                    str(socket_dir),
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    DB_NAME,
                ]
            )
            yield Postgres(port=port, socket_dir=socket_dir)
        finally:
            subprocess.run(
                [*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60, check=False
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        return list(connection.execute(sql).fetchall())


def test_two_nodes_on_one_postgres_index_measure_each_study_once(
    postgres: Postgres, sunnybrook: Path, tmp_path: Path
) -> None:
    """Halves of three studies sent to two nodes sharing one index give one job and result each."""
    data_dir = tmp_path / "shared-data"
    env = {
        "DICOMNODE_STORAGE__DATABASE_URL": postgres.url,
        "DICOMNODE_PIPELINE__STABLE_SECONDS": "2",
        "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
        "DICOMNODE_PIPELINE__WORKERS": "2",
        "DICOMNODE_WEB__ENABLED": "false",
        "DICOMNODE_INFERENCE__PROVIDERS": "CPUExecutionProvider",
        "DICOMNODE_INFERENCE__BASAL_RULE": "per_phase",
    }
    nodes = [
        NodeServer(data_dir=data_dir, log_path=tmp_path / name / "node.log", port=free_port(), extra_env=env)
        for name in ("a", "b")
    ]
    try:
        for node in nodes:
            node.start()
        halves: list[list[Path]] = [[], []]
        for series in SUNNYBROOK_SERIES:
            files = sorted((sunnybrook / series).glob("*.dcm"), key=lambda p: (len(p.name), p.name))
            halves[0].extend(files[0::2])
            halves[1].extend(files[1::2])
        senders = [
            subprocess.Popen(
                storescu_command(node.port, half),
                env=dcmtk_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for node, half in zip(nodes, halves, strict=True)
        ]
        for sender in senders:
            output, _ = sender.communicate(timeout=300)
            assert sender.returncode == 0, output

        def all_done() -> bool:
            rows = _query(postgres.url, "SELECT state FROM jobs")
            return len(rows) >= len(SUNNYBROOK_SERIES) and all(r[0] in ("done", "failed") for r in rows)

        wait_for(all_done, 400, "three finished jobs in the shared index", poll_s=0.5)

        jobs = _query(postgres.url, "SELECT study_instance_uid, version, state FROM jobs")
        assert len(jobs) == 3, jobs
        assert {row[1] for row in jobs} == {1}, jobs
        assert {row[2] for row in jobs} == {"done"}, jobs
        assert len({row[0] for row in jobs}) == 3, jobs
        results = _query(postgres.url, "SELECT study_instance_uid, version, outcome FROM results")
        assert len(results) == 3, results
        indexed = _query(postgres.url, "SELECT count(*) FROM instances")[0][0]
        assert indexed == sum(SUNNYBROOK_SERIES.values())
        measured = [event for node in nodes for event in node.log_events("stack measured")]
        assert len(measured) == 3, [node.log_tail() for node in nodes]
        # The worklist reads each result's provenance out of PostgreSQL's JSON column.
        listed = subprocess.run(
            [*dicomnode_command(), "worklist", "list", "--json"],
            env={**os.environ, **env, "DICOMNODE_STORAGE__DATA_DIR": str(data_dir)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr[-2000:]
        rows = json.loads(listed.stdout)
        assert len(rows) == 3, rows
        for row in rows:
            assert row["basal_rule"] == "per_phase", row
            assert re.fullmatch("[0-9a-f]{64}", row["model"]["sha256"] or ""), row
            assert re.fullmatch("[0-9a-f]{64}", row["model"]["companion_sha256"] or ""), row
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.parametrize("failpoint", ["worker:measured", "sender:sent"])
def test_work_of_a_node_that_dies_for_good_on_another_host_is_taken_over_when_its_lease_runs_out(
    postgres: Postgres, sunnybrook: Path, tmp_path: Path, failpoint: str
) -> None:
    """Node A (its own host name) is killed holding a job or a delivery and never comes back; node B,
    on another host, takes the claim over once A's lease has run out, and the result reaches PACS."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give node A a host name of its own")
    if not Path(STORESCP).exists():
        pytest.skip("DCMTK storescp is not installed")
    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen(
        [STORESCP, "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "DICOMNODE_STORAGE__DATABASE_URL": postgres.url,
        "DICOMNODE_STORAGE__CLAIM_LEASE_SECONDS": "10",
        "DICOMNODE_PIPELINE__STABLE_SECONDS": "2",
        "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2",
        "DICOMNODE_WEB__ENABLED": "false",
        "DICOMNODE_INFERENCE__PROVIDERS": "CPUExecutionProvider",
        "DICOMNODE_DELIVERY__DESTINATIONS": json.dumps(
            [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
    }
    data_dir = tmp_path / "shared-data"
    ghost = NodeServer(
        data_dir=data_dir,
        log_path=tmp_path / "a" / "node.log",
        port=free_port(),
        extra_env={**env, "DICOMNODE_FAILPOINT": failpoint},
        wrapper=[unshare, "--uts", "sh", "-c", 'hostname node-a-gone && exec "$@"', "sh"],
    )
    survivor = NodeServer(
        data_dir=data_dir, log_path=tmp_path / "b" / "node.log", port=free_port(), extra_env=env
    )
    try:
        ghost.start()
        files = sorted((sunnybrook / "SCD0000301").glob("*.dcm"))
        sent = subprocess.run(
            storescu_command(ghost.port, files), env=dcmtk_env(), capture_output=True, check=False
        )
        assert sent.returncode == 0, sent.stdout
        wait_for(lambda: not ghost.is_running(), 300, f"node A to die at {failpoint}", poll_s=0.5)
        claimed = _query(
            postgres.url,
            "SELECT claimed_by FROM jobs WHERE state = 'running' "
            "UNION ALL SELECT claimed_by FROM deliveries WHERE state = 'sending'",
        )
        assert claimed and all(str(row[0]).startswith("node-a-gone:") for row in claimed), claimed

        survivor.start()

        def delivered() -> bool:
            rows = _query(postgres.url, "SELECT state FROM deliveries")
            return len(rows) >= 2 and all(row[0] == "delivered" for row in rows)

        wait_for(delivered, 400, "node B to finish node A's work and deliver it", poll_s=0.5)
        assert survivor.log_events("took over work whose node stopped renewing its claim")
        jobs = _query(postgres.url, "SELECT state FROM jobs")
        assert [row[0] for row in jobs] == ["done"]
        assert len(list(pacs_dir.iterdir())) >= 2  # the draft SR and the SC
    finally:
        survivor.stop()
        ghost.stop()
        pacs.terminate()
        pacs.wait(timeout=10)
