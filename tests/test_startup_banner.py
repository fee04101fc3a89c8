"""``dicomnode serve`` says once, at start-up, where it listens, whether anyone can sign in and where
results go (what an administrator looks for first)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import NodeServerFactory
from tests.support import dicomnode_command, wait_for
from tests.web.stow_client import made_token

pytestmark = pytest.mark.integration


def _banner(output: str) -> str:
    """The output once the banner's last line is in it, else empty (not yet)."""
    return output if "  Destinations " in output else ""


def test_a_first_start_says_where_everything_is_and_what_is_missing(node_server: NodeServerFactory) -> None:
    """No user and no destination: the banner gives the worklist URL, the command that adds a user, and
    says results stay on the worklist; with a user and a destination it names them instead."""
    server = node_server()
    text = wait_for(lambda: _banner(server.log_path.read_text()), 60, "the banner")
    assert f"AE title DICOMNODE on 127.0.0.1:{server.port} (no TLS)" in text
    assert "  Worklist     http://127.0.0.1:" in text
    assert "none yet: add a radiologist with `dicomnode users add NAME --role radiologist" in text
    assert "  Destinations none: results stay on the worklist" in text
    assert "/dicomweb/studies (no sender token yet: `dicomnode tokens add NAME`)" in text
    assert text.count(" ready\n") == 1
    server.stop()

    added = subprocess.run(
        [*dicomnode_command(), "users", "add", "jsmith", "--role", "radiologist", "--full-name", "Smith^Jane",
         "--organization", "St Elsewhere", "--password-stdin"],
        input="correct horse battery staple\n", env=server.env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    made_token(server.env, "gateway")
    server.log_path.write_text("")
    destinations = [
        {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
        {"dicomweb": "https://archive.example/dicom-web"},
    ]
    server.extra_env = {**server.extra_env, "DICOMNODE_DELIVERY__DESTINATIONS": json.dumps(destinations)}
    server.start()
    text = wait_for(lambda: _banner(server.log_path.read_text()), 60, "the banner")
    assert "  Users        1 active" in text
    assert "  Destinations PACS@127.0.0.1:104, https://archive.example/dicom-web" in text
    assert "/dicomweb/studies (1 sender token(s))" in text
