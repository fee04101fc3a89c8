"""A real browser (the system Chromium, driven by Playwright) logs in, opens a study and signs it off."""

from __future__ import annotations

import pytest

from node.web.server import WebServer, build_app
from tests.review.seed import PASSWORD, Seeded, seed_result
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, missing


@pytest.fixture
def server(seeded: Seeded) -> WebServer:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    settings = seeded.settings.model_copy(update={"web": seeded.settings.web.model_copy(update={"port": 0})})
    return WebServer(build_app(settings, seeded.parts, seeded.metrics, seeded.clock, {}), settings.web)


def test_radiologist_signs_off_in_a_browser(server: WebServer, seeded: Seeded) -> None:
    """In Chromium a radiologist logs in, opens a study from the worklist, signs it off, sees it verified."""
    from playwright.sync_api import sync_playwright

    result_id = seed_result(seeded, patient_name="BROWSER^TEST", secondary_capture=True)
    seeded.user("jsmith")
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/worklist")
            assert page.url.startswith(f"{base}/login")
            page.fill("input[name=username]", "jsmith")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/worklist")
            page.click("text=TEST BROWSER")
            page.wait_for_url(f"{base}/results/{result_id}")
            assert page.is_visible("text=AI RESULT – NOT VERIFIED BY A RADIOLOGIST")
            sc_loaded = page.evaluate("document.querySelector('img.sc').naturalWidth")
            page.click("button:has-text('Sign off')")
            page.wait_for_url(f"{base}/results/{result_id}")
            assert page.is_visible("text=SIGNED OFF BY JANE SMITH")
            browser.close()
    finally:
        server.stop()
    assert sc_loaded > 0
    review = seeded.parts.store.for_result(result_id)
    assert review is not None and review.user_name == "jsmith" and review.address == "127.0.0.1"
