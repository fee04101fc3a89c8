"""Dead letters are visible (worklist banner, /metrics) and recoverable (`dicomnode deliveries`, audited)."""

from __future__ import annotations

import json
from datetime import timedelta

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from node.cli import app
from node.domain import DeliveryState
from node.store.audit import AuditAction
from tests.delivery.peer import outgoing_object
from tests.review.seed import PACS, Seeded
from tests.web.conftest import login

runner = CliRunner()
STUDY = "1.2.826.0.1.3680043.10.88"


def _dead_letters(seeded: Seeded, count: int) -> list[int]:
    """``count`` objects for PACS whose only attempt failed (a cap of one attempt): dead letters."""
    for _ in range(count):
        item, data = outgoing_object(STUDY)
        assert seeded.outbox.add(item, data, [PACS], seeded.clock.now())
    due = seeded.outbox.claim_due("test:1:sender", seeded.clock.now(), 50, timedelta(minutes=2))
    for delivery in due:
        assert seeded.outbox.mark_failed(
            delivery, "destination unreachable", None, seeded.clock.now(), 1, lambda _: 5.0
        )
    return [delivery.delivery_id for delivery in due]


def _env(seeded: Seeded) -> dict[str, str]:
    return {
        "DICOMNODE_STORAGE__DATA_DIR": str(seeded.settings.storage.data_dir),
        "DICOMNODE_LOGGING__LEVEL": "ERROR",
    }


def test_the_worklist_and_metrics_show_dead_letters_per_destination(
    client: TestClient, seeded: Seeded
) -> None:
    """The worklist carries a banner naming the destination and the command; /metrics counts them."""
    seeded.user("jsmith")
    login(client, "jsmith")
    quiet = client.get("/worklist")
    assert "Not delivered" not in quiet.text
    _dead_letters(seeded, 2)
    page = client.get("/worklist")
    assert page.status_code == 200
    assert f"2 objects to {PACS.key}" in page.text
    assert "dicomnode deliveries retry-all-dead" in page.text
    metrics = client.get("/metrics").text
    assert f'dicomnode_dead_letters{{destination="{PACS.key}"}} 2.0' in metrics


def test_deliveries_list_retry_and_retry_all_dead_from_the_console(seeded: Seeded) -> None:
    """`deliveries list --state dead` names them; `retry` and `retry-all-dead` queue them again, audited."""
    first, second, third = _dead_letters(seeded, 3)
    listed = runner.invoke(app, ["deliveries", "list", "--state", "dead", "--json"], env=_env(seeded))
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert sorted(row["id"] for row in rows) == [first, second, third]
    assert {row["last_error"] for row in rows} == {"destination unreachable"}
    table = runner.invoke(app, ["deliveries", "list"], env=_env(seeded))
    assert "draft picture (SC)" in table.output and "destination unreachable" in table.output

    retried = runner.invoke(app, ["deliveries", "retry", str(first)], env=_env(seeded))
    assert retried.exit_code == 0, retried.output
    again = runner.invoke(app, ["deliveries", "retry", str(first)], env=_env(seeded))
    assert again.exit_code == 1 and f"not dead, left alone: {first}" in again.output
    rest = runner.invoke(app, ["deliveries", "retry-all-dead", "--destination", PACS.key], env=_env(seeded))
    assert rest.exit_code == 0 and "2 dead letter(s) queued again" in rest.output

    states = {row.id: (row.state, row.attempts) for row in seeded.outbox.rows()}
    assert states == {key: (DeliveryState.PENDING, 0) for key in (first, second, third)}
    audited = seeded.parts.audit.entries(action=AuditAction.DELIVERY_RETRY)
    assert [entry.details["deliveries"] for entry in reversed(audited)] == [[first], [second, third]]
    assert {entry.address for entry in audited} == {"cli"}
    assert all(entry.actor.startswith("cli") for entry in audited)
