"""``dicomnode users`` and ``dicomnode audit`` through Typer's CliRunner, on a data directory of its own."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from node.cli import app
from tests.review.seed import PASSWORD, Seeded

runner = CliRunner()


def _env(seeded: Seeded) -> dict[str, str]:
    return {
        "DICOMNODE_STORAGE__DATA_DIR": str(seeded.settings.storage.data_dir),
        "DICOMNODE_LOGGING__LEVEL": "ERROR",
    }


def _add(seeded: Seeded, name: str, role: str = "radiologist", password: str = PASSWORD) -> object:
    arguments = ["users", "add", name, "--role", role, "--full-name", "Jane Smith"]
    arguments += ["--organization", "St Elsewhere", "--password-stdin"]
    return runner.invoke(app, arguments, input=password + "\n", env=_env(seeded))


def test_users_add_list_disable(seeded: Seeded, tmp_path: Path) -> None:
    """Users added from the console are listed, can be disabled, and each change is in the audit."""
    added = _add(seeded, "jsmith")
    assert added.exit_code == 0, added.output
    assert "added radiologist jsmith" in added.output
    listed = runner.invoke(app, ["users", "list", "--json"], env=_env(seeded))
    assert listed.exit_code == 0, listed.output
    (user,) = json.loads(listed.output)
    assert (user["name"], user["role"], user["disabled"]) == ("jsmith", "radiologist", False)
    assert "password" not in listed.output.lower()
    assert runner.invoke(app, ["users", "disable", "jsmith"], env=_env(seeded)).exit_code == 0
    (user,) = json.loads(runner.invoke(app, ["users", "list", "--json"], env=_env(seeded)).output)
    assert user["disabled"] is True
    audit = runner.invoke(app, ["audit", "--json", "--limit", "5"], env=_env(seeded))
    assert [entry["action"] for entry in json.loads(audit.output)] == ["user_disable", "user_add"]
    assert all(entry["address"] == "cli" for entry in json.loads(audit.output))


def test_users_cli_refusals_exit_1_with_a_message(seeded: Seeded) -> None:
    """A duplicate name, a bad role, a short password and an unknown user exit 1 with one error line."""
    assert _add(seeded, "jsmith").exit_code == 0
    for result, message in (
        (_add(seeded, "jsmith"), "error: user 'jsmith' already exists\n"),
        (_add(seeded, "other", role="superuser"), "--role must be one of"),
        (_add(seeded, "other", password="short"), "at least 12 characters"),
        (
            runner.invoke(app, ["users", "disable", "nobody"], env=_env(seeded)),
            "error: no user 'nobody'\n",
        ),
    ):
        assert result.exit_code == 1
        assert message in result.output


def test_users_reset_sets_a_new_password(seeded: Seeded) -> None:
    """``users reset`` replaces the password: the old one fails, the new one works."""
    assert _add(seeded, "jsmith").exit_code == 0
    reset = runner.invoke(
        app,
        ["users", "reset", "jsmith", "--password-stdin"],
        input="a completely new password\n",
        env=_env(seeded),
    )
    assert reset.exit_code == 0, reset.output
    accounts = seeded.parts.accounts
    accounts.authenticate(
        "jsmith", "a completely new password", address="t", now=seeded.clock.now(), via="test"
    )
    assert not [user for user in accounts.users.all() if user.disabled]
