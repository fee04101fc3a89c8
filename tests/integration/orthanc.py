"""Orthanc as the hospital PACS in integration tests: Debian's binary with the deploy config, on
127.0.0.1, its REST API, and (optionally) its DICOMweb plugin."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

from tests.support import REPO_ROOT, free_port, port_accepts, wait_for

DEPLOY = REPO_ROOT / "deploy" / "orthanc"
ORTHANC_AET = "ORTHANC"
#: Debian's orthanc-dicomweb package.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    """Debian's Orthanc (``/usr/sbin/Orthanc``), else one on PATH."""
    for candidate in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if Path(candidate).is_file():
            return candidate
    return shutil.which("Orthanc")


def deploy_config() -> dict[str, Any]:
    """``deploy/orthanc/orthanc.json`` as a dict (its full-line ``//`` comments dropped)."""
    text = (DEPLOY / "orthanc.json").read_text()
    return json.loads("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//")))


@dataclass
class Orthanc:
    """A running Orthanc on 127.0.0.1 and its REST API (no authentication)."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    log_path: Path

    def get(self, path: str, raw: bool = False) -> Any:
        """GET a REST resource: parsed JSON, or bytes when ``raw``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as response:
            body = response.read()
        return body if raw else json.loads(body)

    def alive(self) -> bool:
        """Whether the REST API answers (fails the wait when Orthanc has exited)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited early:\n{self.log_path.read_text(errors='replace')[-4000:]}")
        try:
            self.get("/system")
        except (urllib.error.URLError, OSError):
            return False
        return port_accepts(self.dicom_port)

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Simplified tags of every non-MR instance (the node's results) Orthanc holds in one study."""
        found = []
        for study in self.get("/studies?expand"):
            if study["MainDicomTags"].get("StudyInstanceUID") != study_uid:
                continue
            for series in self.get(f"/studies/{study['ID']}/series"):
                if series["MainDicomTags"].get("Modality") == "MR":
                    continue
                for instance in series["Instances"]:
                    tags = self.get(f"/instances/{instance}/tags?simplify")
                    found.append({"ID": instance, "OrthancStudy": study["ID"], **tags})
        return found

    def post(self, path: str, data: bytes, content_type: str = "application/json") -> Any:
        """POST to the REST API; the parsed JSON answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())

    def dataset(self, instance_id: str) -> pydicom.Dataset:
        """Download one instance and parse it."""
        return pydicom.dcmread(BytesIO(self.get(f"/instances/{instance_id}/file", raw=True)))


@contextlib.contextmanager
def running_orthanc(
    binary: str, workdir: Path, dicom_port: int, node_port: int, changes: dict[str, Any] | None = None
) -> Iterator[Orthanc]:
    """Orthanc with the deploy config: 127.0.0.1, a free HTTP port, temp storage, forwarding to the node;
    ``changes`` replace top-level keys of the config (``LuaScripts: []`` to forward nothing)."""
    config = deploy_config()
    http_port = free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    config.update(
        {
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ORTHANC_AET,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "LuaScripts": [str(DEPLOY / "autoforward.lua")],
        }
    )
    config["DicomModalities"]["dicomnode"].update({"Host": "127.0.0.1", "Port": node_port})
    config.update(changes or {})
    http_port = int(config["HttpPort"])
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, str(config_path)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir,
        )  # fmt: skip
    orthanc = Orthanc(process=process, http_port=http_port, dicom_port=dicom_port, log_path=log_path)
    try:
        wait_for(orthanc.alive, 60, "Orthanc's REST API and DICOM port", poll_s=0.2)
        yield orthanc
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
