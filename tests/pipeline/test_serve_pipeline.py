"""The pipeline inside ``dicomnode serve``: measured once after the quiet period, again on a late instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.store.index import Index
from node.store.jobs import JobQueue
from node.store.schema import results
from tests.conftest import NodeServerFactory
from tests.support import run_storescu, wait_for

PHASES = 20
SLICES = range(4, 8)

pytestmark = pytest.mark.integration


def _results(index_url: str) -> list[dict[str, Any]]:
    index = Index.open(index_url)
    try:
        with index.engine.connect() as connection:
            rows = connection.execute(results.select().order_by(results.c.version)).mappings().all()
        return [dict(row) for row in rows]
    finally:
        index.close()


def test_serve_measures_after_quiet_period_and_again_after_a_late_instance(
    node_server: NodeServerFactory, sunnybrook: Path
) -> None:
    """A study is measured once when quiet; a late instance yields exactly one new version."""
    server = node_server(
        {"DICOMNODE_PIPELINE__STABLE_SECONDS": "2", "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2"}
    )
    files = {int(path.stem): path for path in (sunnybrook / "SCD0000101").glob("*.dcm")}
    subset = [files[s * PHASES + p + 1] for s in SLICES for p in range(PHASES)]
    late = subset.pop(30)
    url = f"sqlite:///{server.index_path}"

    sent = run_storescu(server.port, subset)
    assert sent.returncode == 0, sent.stderr
    first = wait_for(lambda: _results(url), 180, "the first result")
    assert [(row["version"], row["outcome"]) for row in first] == [(1, "measured")]
    assert "missing_phases" in first[0]["qc_flags"]

    sent = run_storescu(server.port, [late])
    assert sent.returncode == 0, sent.stderr
    both = wait_for(lambda: [r for r in _results(url) if r["version"] == 2], 180, "the second version")
    assert "missing_phases" not in both[0]["qc_flags"]
    rows = _results(url)
    assert [(row["version"], bool(row["superseded"])) for row in rows] == [(1, True), (2, False)]
    assert len(server.log_events("stack measured")) == 2
    assert len(server.log_events("study queued")) == 2
    index = Index.open(url)
    try:
        assert JobQueue(index).job_states() == {"done": 2}
    finally:
        index.close()


def test_one_study_logs_a_handful_of_lines_at_info(node_server: NodeServerFactory, sunnybrook: Path) -> None:
    """A 240-instance study writes under 20 log lines at INFO (was 504): no line per instance, pynetdicom's
    per-request UID-conformance warning counted per association, no highdicom narration."""
    server = node_server(
        {"DICOMNODE_PIPELINE__STABLE_SECONDS": "2", "DICOMNODE_PIPELINE__POLL_SECONDS": "0.2"}
    )
    started = len(server.log_path.read_text().splitlines())
    files = sorted((sunnybrook / "SCD0000101").glob("*.dcm"))
    sent = run_storescu(server.port, files)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: server.log_events("result published"), 300, "the published result")
    lines = server.log_path.read_text().splitlines()[started:]
    assert len(lines) < 20, "\n".join(lines)
    (closed,) = server.log_events("association closed")
    assert (closed["stored"], closed["nonconformant_uids"]) == (240, 232)
    assert not any("highdicom" in line or "Non-conformant" in line for line in lines)
