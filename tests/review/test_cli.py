"""``dicomnode worklist`` through Typer's CliRunner: the same rules and audit as the web app."""

from __future__ import annotations

import json
import re

from sqlalchemy import update
from typer.testing import CliRunner

from node.accounts.users import Role
from node.cli import app
from node.domain import OutboxKind, Outcome, QcStatus
from node.store.audit import AuditAction
from node.store.results import backfill_qc_status
from node.store.reviews import WorklistFilter
from node.store.schema import results
from tests.review.seed import COMPANION_SHA256, MODEL_SHA256, PASSWORD, Seeded, seed_result

runner = CliRunner()


def _env(seeded: Seeded) -> dict[str, str]:
    return {
        "DICOMNODE_STORAGE__DATA_DIR": str(seeded.settings.storage.data_dir),
        "DICOMNODE_LOGGING__LEVEL": "ERROR",
    }


def _review(seeded: Seeded, *args: str, password: str = PASSWORD) -> object:
    return runner.invoke(
        app, ["worklist", *args, "--password-stdin"], input=password + "\n", env=_env(seeded)
    )


def test_worklist_list_json(seeded: Seeded) -> None:
    """``worklist list --json`` gives every current result with its status, values, flags and confidence."""
    pending = seed_result(seeded, qc_flags=("missing_slices",), confidence=0.4)
    seed_result(seeded, outcome=Outcome.NO_SHORT_AXIS_CINE)
    listed = runner.invoke(app, ["worklist", "list", "--json", "--status", "pending"], env=_env(seeded))
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["result_id"] == pending and row["status"] == "pending"
    assert (row["edv_ml"], row["esv_ml"], row["ef_pct"]) == (150.0, 60.0, 60.0)
    assert row["qc_flags"] == ["missing_slices"] and row["confidence"] == 0.4
    assert row["study_instance_uid"]
    everything = json.loads(runner.invoke(app, ["worklist", "list", "--json"], env=_env(seeded)).output)
    assert sorted(item["status"] for item in everything) == ["no short-axis cine found", "pending"]


def test_results_qc_asks_to_check_come_first_and_say_why(seeded: Seeded) -> None:
    """Whatever the sort, ``check`` results lead the worklist; a note alone (slices left out) leaves a
    result ``ok``; ``show`` states the status in words."""
    ok_noted = seed_result(seeded, qc_flags=("basal_slices_excluded",), confidence=0.95)
    check = seed_result(seeded, qc_flags=("unstable_segmentation",), confidence=0.2)
    ok_clean = seed_result(seeded, confidence=0.9)
    listed = json.loads(runner.invoke(app, ["worklist", "list", "--json"], env=_env(seeded)).output)
    assert listed[0]["result_id"] == check
    assert {row["result_id"]: row["qc_status"] for row in listed} == {
        check: "check",
        ok_noted: "ok",
        ok_clean: "ok",
    }
    by_confidence = seeded.parts.store.worklist(WorklistFilter(sort="confidence", descending=True))
    assert [row.result_id for row in by_confidence] == [check, ok_noted, ok_clean]
    table = runner.invoke(app, ["worklist", "list"], env=_env(seeded)).output.splitlines()
    assert table[1].startswith(check) and " check " in table[1]
    shown = runner.invoke(app, ["worklist", "show", check], env=_env(seeded)).output
    assert "qc status      check: Quality control: check this result" in shown
    assert "the model is unsure of this study" in shown


def test_worklist_show_prints_flags_in_words_and_audits_the_view(seeded: Seeded) -> None:
    """``worklist show`` prints the values and the QC flags in plain words, and audits the view."""
    result_id = seed_result(seeded, qc_flags=("missing_slices",))
    shown = runner.invoke(app, ["worklist", "show", result_id], env=_env(seeded))
    assert shown.exit_code == 0, shown.output
    assert "150.0 mL" in shown.output and "Slices are missing from the stack" in shown.output
    assert "confidence     0.90\n" in shown.output
    assert "model          lvseg-unet 1.0.0\n" in shown.output
    assert "measured       basal slices judged per phase (SCMR)\n" in shown.output
    (entry,) = seeded.parts.audit.entries(action=AuditAction.VIEW_STUDY)
    assert entry.target == result_id and entry.address == "cli"
    missing = runner.invoke(app, ["worklist", "show", "no-such-id"], env=_env(seeded))
    assert missing.exit_code == 1 and "error: no such result" in missing.output
    shown_json = runner.invoke(app, ["worklist", "show", result_id, "--json"], env=_env(seeded))
    as_json = json.loads(shown_json.output)
    assert as_json["basal_rule"] == "per_phase"
    assert as_json["model"] == {
        "name": "lvseg-unet",
        "version": "1.0.0",
        "sha256": MODEL_SHA256,
        "companion_sha256": COMPANION_SHA256,
    }


def test_worklist_sign_from_the_console(seeded: Seeded) -> None:
    """A radiologist signs off with their password on stdin; a second sign-off is refused with 409."""
    result_id = seed_result(seeded)
    seeded.user("jsmith")
    signed = _review(seeded, "sign", result_id, "--user", "jsmith")
    assert signed.exit_code == 0, signed.output
    assert f"signed off {result_id}" in signed.output
    again = _review(seeded, "sign", result_id, "--user", "jsmith")
    assert again.exit_code == 1 and "error: this result has already been reviewed" in again.output
    (entry,) = seeded.parts.audit.entries(action=AuditAction.SIGN_OFF)
    assert (entry.actor, entry.address) == ("jsmith", "cli")
    # The console records the sign-off; the serving node queues the verified SR for its destinations.
    assert seeded.parts.store.outbox_path(result_id, OutboxKind.VERIFIED_SR) is None
    assert seeded.parts.service.publish_pending(seeded.clock.now()) == 1
    assert seeded.parts.store.outbox_path(result_id, OutboxKind.VERIFIED_SR) is not None


def test_worklist_refusals_from_the_console(seeded: Seeded) -> None:
    """A wrong password, an admin, a reject without reason, amended volumes without a reason all exit 1
    with one line in words (no HTTP status: the console is not the web) and change nothing."""
    result_id = seed_result(seeded)
    seeded.user("jsmith")
    seeded.user("boss", role=Role.ADMIN)
    for result, status in (
        (_review(seeded, "sign", result_id, "--user", "jsmith", password="wrong password"), "wrong password"),
        (_review(seeded, "sign", result_id, "--user", "boss"), "only a radiologist"),
        (_review(seeded, "reject", result_id, "--user", "jsmith"), "a reason is required to reject"),
        (
            _review(seeded, "amend", result_id, "--user", "jsmith", "--edv", "100", "--esv", "50"),
            "a reason is required to amend",
        ),
    ):
        assert result.exit_code == 1 and status in result.output, result.output
        assert re.search(r"\(\d{3} ", result.output) is None
    assert seeded.parts.store.for_result(result_id) is None


def test_worklist_amend_from_the_console(seeded: Seeded) -> None:
    """``worklist amend`` records the amended volumes next to the AI ones."""
    result_id = seed_result(seeded)
    seeded.user("jsmith")
    amended = _review(
        seeded,
        "amend",
        result_id,
        "--user",
        "jsmith",
        "--edv",
        "140",
        "--esv",
        "70",
        "--reason",
        "apex excluded",
    )
    assert amended.exit_code == 0, amended.output
    review = seeded.parts.store.for_result(result_id)
    assert review is not None and (review.ai_edv_ml, review.edv_ml, review.esv_ml) == (150.0, 140.0, 70.0)


def test_console_commands_log_only_warnings_unless_verbose(seeded: Seeded) -> None:
    """A sign-off at LOGGING__LEVEL=DEBUG prints its answer and no log line; with ``-v`` the configured
    level holds (the library detail that stays at DEBUG shows)."""
    seeded.user("jsmith")
    env = {**_env(seeded), "DICOMNODE_LOGGING__LEVEL": "DEBUG", "DICOMNODE_LOGGING__FORMAT": "json"}
    quiet = runner.invoke(
        app, ["worklist", "sign", seed_result(seeded), "--user", "jsmith", "--password-stdin"],
        input=PASSWORD + "\n", env=env,
    )  # fmt: skip
    assert quiet.exit_code == 0, quiet.output
    assert [line for line in quiet.output.splitlines() if line.startswith("{")] == []
    verbose = runner.invoke(
        app, ["-v", "worklist", "sign", seed_result(seeded), "--user", "jsmith", "--password-stdin"],
        input=PASSWORD + "\n", env=env,
    )  # fmt: skip
    assert verbose.exit_code == 0, verbose.output
    assert any('"logger": "highdicom' in line for line in verbose.output.splitlines())


def test_results_an_older_node_measured_get_their_status_and_sort_with_the_rest(seeded: Seeded) -> None:
    """A result stored before QC 2 (no qc_status) reads its status from its flags, and the start-up
    backfill stores it so the worklist puts it first like any check result."""
    older = seed_result(seeded, qc_flags=("missing_slices",))
    newer = seed_result(seeded)
    with seeded.index.engine.begin() as connection:
        connection.execute(update(results).where(results.c.id == older).values(qc_status=None))
    (row,) = [r for r in seeded.parts.store.worklist(WorklistFilter()) if r.result_id == older]
    assert row.qc_status == QcStatus.CHECK
    assert backfill_qc_status(seeded.index) == 1
    assert [r.result_id for r in seeded.parts.store.worklist(WorklistFilter())] == [older, newer]
    assert backfill_qc_status(seeded.index) == 0
