"""`dicomnode tokens`: a sender's STOW-RS token is shown once, listed without itself, revoked at once."""

from __future__ import annotations

import json
import subprocess

from node.accounts.tokens import token_hash
from tests.conftest import NodeServerFactory
from tests.support import dicomnode_command


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dicomnode_command(), "tokens", *args], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_tokens_are_made_listed_and_revoked_from_the_console(node_server: NodeServerFactory) -> None:
    env = node_server(start=False).env
    made = _run(env, "add", "orthanc")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 40 and "shown only now" in made.stderr
    assert _run(env, "add", "orthanc").returncode == 1, "a second token under one name"
    assert _run(env, "add", "no spaces").returncode == 1

    listed = _run(env, "list", "--json")
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["active"], row["last_used_at"]) == ("orthanc", True, None)
    assert token not in listed.stdout and token_hash(token) not in listed.stdout

    assert _run(env, "revoke", "orthanc").returncode == 0
    (row,) = json.loads(_run(env, "list", "--json").stdout)
    assert row["active"] is False
    again = _run(env, "revoke", "orthanc")
    assert again.returncode == 1 and "no active token named orthanc" in again.stderr
