"""A spool that turns read-only: senders are told to retry (0xA700), and a node started on one says so in
one line. The read-only file system is a real read-only bind mount in the node's own mount namespace
(``unshare -m``), so the test needs root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import (
    NodeServer,
    dicomnode_command,
    free_port,
    receiver_only_env,
    run_storescu,
    synthetic_mr,
)

pytestmark = pytest.mark.integration


def _tools() -> tuple[str, str]:
    unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
    if unshare is None or nsenter is None or os.geteuid() != 0:
        pytest.skip("needs root, unshare and nsenter for a read-only bind mount")
    return unshare, nsenter


def _instance(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(synthetic_mr())
    return path


def test_a_spool_remounted_read_only_answers_out_of_resources_without_a_traceback(tmp_path: Path) -> None:
    """After a read-only remount, C-STORE gets 0xA700 (retry later) and one log line naming the cause."""
    unshare, nsenter = _tools()
    data_dir = tmp_path / "data"
    spool = data_dir / "spool"
    spool.mkdir(parents=True)
    server = NodeServer(
        data_dir=data_dir,
        log_path=tmp_path / "node.log",
        port=free_port(),
        extra_env={**receiver_only_env(), "DICOMNODE_WEB__ENABLED": "false"},
        wrapper=[unshare, "-m", "sh", "-c", f'mount --bind "{spool}" "{spool}" && exec "$@"', "sh"],
    ).start()
    try:
        assert run_storescu(server.port, [_instance(tmp_path, "first.dcm")]).returncode == 0
        remount = [nsenter, "-t", str(server.pid), "-m", "mount", "-o", "remount,ro,bind", str(spool)]
        remounted = subprocess.run(remount, capture_output=True, text=True, timeout=30, check=False)
        assert remounted.returncode == 0, remounted.stderr
        refused = run_storescu(server.port, [_instance(tmp_path, "second.dcm")], verbose=True)
    finally:
        server.stop()
    assert "Received Store Response (Refused: OutOfResources)" in refused.stdout + refused.stderr
    (line,) = server.log_events("instance refused")
    assert line["status"] == "0xA700" and line["reason"] == "spool not writable: Read-only file system"
    assert not server.log_events("instance failed")


def test_a_node_started_on_a_read_only_data_folder_says_so_in_one_line(tmp_path: Path) -> None:
    """``dicomnode serve`` on a read-only data folder exits 2 with one line naming the setting."""
    unshare, _ = _tools()
    data_dir = tmp_path / "data"
    (data_dir / "spool" / ".incoming").mkdir(parents=True)
    mount = f'mount --bind "{data_dir}" "{data_dir}" && mount -o remount,ro,bind "{data_dir}" && exec "$@"'
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOMNODE_")}
    env.update({"DICOMNODE_STORAGE__DATA_DIR": str(data_dir), "DICOMNODE_DICOM__PORT": str(free_port())})
    done = subprocess.run(
        [unshare, "-m", "sh", "-c", mount, "sh", *dicomnode_command(), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: DICOMNODE_STORAGE__DATA_DIR: {data_dir} is not writable (Read-only file system); "
        "give the node a folder it can write"
    ]
