"""Make ``docs/worklist.png`` and ``docs/study.png`` from a node that measured three Sunnybrook studies.

Run ``python -m tests.web.screenshots docs`` (needs ../shared/data, playwright and /usr/bin/chromium).
Everything is real: the pipeline and model, the publisher's draft SR and secondary capture, the web
server on loopback, the system Chromium.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from node.accounts.users import Role
from node.app import Node
from node.clock import ManualClock
from node.config import load_settings
from node.metrics import NodeMetrics
from node.review.parts import ReviewParts
from node.web.server import WebServer, index_reachable
from tests.review.pipeline import process, subset
from tests.review.seed import PACS, PASSWORD
from tests.support import SUNNYBROOK
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS


def main(out: Path) -> None:
    """Measure, publish, review one study, serve, and capture the two pages."""
    from playwright.sync_api import sync_playwright

    for key in [key for key in os.environ if key.startswith("DICOMNODE_")]:
        del os.environ[key]
    data = Path(tempfile.mkdtemp()) / "data"
    os.environ.update(
        {
            "DICOMNODE_STORAGE__DATA_DIR": str(data),
            "DICOMNODE_STORAGE__MIN_FREE_MB": "1",
            "DICOMNODE_DELIVERY__DESTINATIONS": PACS.model_dump_json().join("[]"),
            "DICOMNODE_WEB__PORT": "0",
        }
    )
    clock = ManualClock()
    node = Node.build(load_settings(), clock=clock)
    rows = []
    for series, slices in (
        ("SCD0000101", range(2, 10)),
        ("SCD0000201", range(3, 10)),
        ("SCD0000301", range(2, 8)),
    ):
        rows.append(process(node, clock, subset(SUNNYBROOK, series, slices)))
        clock.advance(60)
    while node.publisher.run_once():
        pass
    parts = ReviewParts.build(node.settings, node.index, node.outbox)
    for name, full_name in (("jsmith", "Jane Smith"), ("adoe", "Ann Doe")):
        parts.accounts.add_user(
            name=name,
            role=Role.RADIOLOGIST,
            full_name=full_name,
            organization="St Elsewhere Radiology",
            password=PASSWORD,
            identification_code=None,
            actor="screenshots",
            address="cli",
            now=clock.now(),
        )
    reviewer = parts.accounts.users.get("adoe")
    assert reviewer is not None
    parts.service.sign(rows[1]["id"], reviewer, "127.0.0.1", clock.now())
    server = WebServer.build(
        node.settings,
        parts,
        NodeMetrics(),
        clock,
        {"index": index_reachable(node.index), "model": lambda: True},
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "jsmith")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/worklist")
            page.screenshot(path=str(out / "worklist.png"), full_page=True)
            page.goto(f"{base}/results/{rows[0]['id']}")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / "study.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
        node.index.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
