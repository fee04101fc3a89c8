"""The worklist app in-process: login, sessions, CSRF, review rules, worklist filters, operations."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid

from node.accounts.users import Role
from node.config import AuthSettings, WebSettings
from node.domain import OutboxKind, Outcome, basal_rule_words
from node.store.audit import AuditAction
from node.store.outbox import OutgoingObject
from node.web.auth import SESSION_COOKIE
from node.web.server import build_app
from tests.review.seed import PACS, PASSWORD, Seeded, encode, seed_result
from tests.web.conftest import csrf_token, login


def _rows(page: str) -> list[str]:
    """Result ids of the worklist rows, in display order."""
    return re.findall(r'<td><a href="/results/([0-9a-f-]{36})">', page)


def test_login_sets_a_hardened_session_cookie(client: TestClient, seeded: Seeded) -> None:
    """A correct login redirects to the worklist with an HttpOnly, SameSite=Strict session cookie."""
    seeded.user("jsmith")
    response = login(client, "jsmith")
    assert response.status_code == 303 and response.headers["location"] == "/worklist"
    cookie = next(
        value for value in response.headers.get_list("set-cookie") if value.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    page = client.get("/worklist")
    assert page.status_code == 200 and "Jane Smith" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script at all


def test_session_cookie_is_secure_behind_tls(seeded: Seeded) -> None:
    """With DICOMNODE_WEB__SECURE_COOKIES=true the session cookie carries the Secure flag."""
    seeded.user("jsmith")
    settings = seeded.settings.model_copy(update={"web": WebSettings(secure_cookies=True)})
    app = build_app(settings, seeded.parts, seeded.metrics, seeded.clock, {})
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        response = login(client, "jsmith")
    cookie = next(
        value for value in response.headers.get_list("set-cookie") if value.startswith(SESSION_COOKIE)
    )
    assert "Secure" in cookie


def test_pages_need_a_login(client: TestClient, seeded: Seeded) -> None:
    """Without a session the worklist, a study and its pictures redirect to the login form."""
    result_id = seed_result(seeded)
    for path in ("/worklist", f"/results/{result_id}", f"/results/{result_id}/cine.gif"):
        response = client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")


def test_logout_ends_the_session(client: TestClient, seeded: Seeded) -> None:
    """After logout the old session cookie no longer opens the worklist, and the logout is audited."""
    seeded.user("jsmith")
    login(client, "jsmith")
    token = client.cookies[SESSION_COOKIE]
    page = client.get("/worklist")
    assert client.post("/logout", data={"csrf_token": csrf_token(page)}).status_code == 303
    client.cookies.set(SESSION_COOKIE, token)
    assert client.get("/worklist").status_code == 303
    assert [entry.action for entry in seeded.parts.audit.entries(limit=1)] == [AuditAction.LOGOUT]


def test_wrong_passwords_back_off(client: TestClient, seeded: Seeded) -> None:
    """Wrong passwords get 401, then 429 with Retry-After even for the right one, until time passes."""
    seeded.user("jsmith")
    failures = AuthSettings().free_failures + 1
    for _ in range(failures):
        wrong = login(client, "jsmith", "not the password")
        assert wrong.status_code == 401 and "wrong password" in wrong.text
    blocked = login(client, "jsmith")
    assert blocked.status_code == 429
    assert blocked.headers["retry-after"] == str(round(AuthSettings().backoff_initial_s))
    seeded.clock.advance(AuthSettings().backoff_initial_s)
    assert login(client, "jsmith").status_code == 303
    assert seeded.metrics.logins.labels(outcome="failure")._value.get() == failures


def test_login_form_without_its_csrf_token_is_rejected(client: TestClient, seeded: Seeded) -> None:
    """A login POST without the token its form carried (or with another) is refused with 403."""
    seeded.user("jsmith")
    client.get("/login")
    for token in ("", "forged"):
        response = client.post(
            "/login", data={"username": "jsmith", "password": PASSWORD, "csrf_token": token}
        )
        assert response.status_code == 403
    assert SESSION_COOKIE not in client.cookies


def test_review_form_without_the_session_csrf_token_is_rejected(client: TestClient, seeded: Seeded) -> None:
    """Review forms without the session's CSRF token, or with a wrong one, get 403 and change nothing."""
    result_id = seed_result(seeded)
    seeded.user("jsmith")
    login(client, "jsmith")
    for action, data in (
        ("sign", {}),
        ("sign", {"csrf_token": "wrong"}),
        ("amend", {"csrf_token": "wrong", "edv_ml": "100", "esv_ml": "50", "reason": "r"}),
        ("reject", {"reason": "r"}),
    ):
        assert client.post(f"/results/{result_id}/{action}", data=data).status_code == 403
    assert seeded.parts.store.for_result(result_id) is None


def test_admin_cannot_sign_off(client: TestClient, seeded: Seeded) -> None:
    """An admin sees no review actions, and a forged sign-off from an admin is refused with 403."""
    result_id = seed_result(seeded)
    seeded.user("boss", role=Role.ADMIN, full_name="Bob Boss")
    login(client, "boss")
    page = client.get(f"/results/{result_id}")
    assert 'action="/results/' not in page.text
    assert "Only radiologists" in page.text
    response = client.post(f"/results/{result_id}/sign", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 403 and "only a radiologist" in response.text
    assert seeded.parts.store.for_result(result_id) is None


def test_sign_off_through_the_web_and_a_second_is_refused(client: TestClient, seeded: Seeded) -> None:
    """A radiologist's sign-off shows as signed off with its SR delivery; a second sign-off gets 409."""
    result_id = seed_result(seeded)
    seeded.user("jsmith")
    login(client, "jsmith")
    page = client.get(f"/results/{result_id}")
    token = csrf_token(page)
    assert client.post(f"/results/{result_id}/sign", data={"csrf_token": token}).status_code == 303
    signed = client.get(f"/results/{result_id}")
    assert "SIGNED OFF BY JANE SMITH" in signed.text
    assert "Verified report delivery" in signed.text and "pending" in signed.text
    again = client.post(f"/results/{result_id}/sign", data={"csrf_token": token})
    assert again.status_code == 409 and "already been reviewed" in again.text
    (entry,) = seeded.parts.audit.entries(action=AuditAction.SIGN_OFF)
    assert entry.address == "testclient"


def test_amend_through_the_web_keeps_ai_and_amended_values(client: TestClient, seeded: Seeded) -> None:
    """An amendment from the form is audited with the AI and the amended values, and the page shows both."""
    result_id = seed_result(seeded, edv_ml=150.0, esv_ml=60.0)
    seeded.user("jsmith")
    login(client, "jsmith")
    token = csrf_token(client.get(f"/results/{result_id}"))
    data = {"csrf_token": token, "edv_ml": "140", "esv_ml": "70", "reason": "apex excluded"}
    assert client.post(f"/results/{result_id}/amend", data=data).status_code == 303
    (entry,) = seeded.parts.audit.entries(action=AuditAction.AMEND)
    assert entry.details["ai"]["edv_ml"] == 150.0 and entry.details["amended"]["edv_ml"] == 140.0
    assert entry.details["ai"]["esv_ml"] == 60.0 and entry.details["amended"]["esv_ml"] == 70.0
    page = client.get(f"/results/{result_id}")
    assert "150.0 mL" in page.text and "140.0 mL" in page.text and "apex excluded" in page.text


def test_reject_requires_a_reason(client: TestClient, seeded: Seeded) -> None:
    """A rejection without a reason gets 422 and changes nothing; with a reason the result shows rejected."""
    result_id = seed_result(seeded)
    seeded.user("jsmith")
    login(client, "jsmith")
    token = csrf_token(client.get(f"/results/{result_id}"))
    missing = client.post(f"/results/{result_id}/reject", data={"csrf_token": token, "reason": " "})
    assert missing.status_code == 422 and "a reason is required" in missing.text
    assert seeded.parts.store.for_result(result_id) is None
    rejected = client.post(
        f"/results/{result_id}/reject", data={"csrf_token": token, "reason": "wrong stack"}
    )
    assert rejected.status_code == 303
    assert "REJECTED BY JANE SMITH" in client.get(f"/results/{result_id}").text


def test_worklist_filters_and_sorts(client: TestClient, seeded: Seeded) -> None:
    """The worklist filters by status, study date and confidence and sorts lowest confidence first."""
    low = seed_result(seeded, patient_name="LOW^CONF", study_date="20250110", confidence=0.2)
    high = seed_result(seeded, patient_name="HIGH^CONF", study_date="20250220", confidence=0.95)
    middle = seed_result(seeded, patient_name="MID^CONF", study_date="20250315", confidence=0.6)
    signed = seed_result(seeded, patient_name="DONE^ALREADY", study_date="20250316", confidence=0.1)
    failed = seed_result(seeded, patient_name="FAILED^STUDY", study_date="20240101", outcome=Outcome.FAILED)
    radiologist = seeded.user("jsmith")
    seeded.parts.service.sign(signed, radiologist, "10.0.0.5", seeded.clock.now())
    login(client, "jsmith")

    everything = client.get("/worklist")
    assert _rows(everything.text) == [failed, signed, middle, high, low]  # newest first
    page = client.get("/worklist")
    quick = re.search(r'href="(/worklist\?[^"]*)">Lowest confidence first', page.text)
    assert quick is not None
    assert _rows(client.get(quick.group(1).replace("&amp;", "&")).text) == [low, middle, high]
    assert _rows(client.get("/worklist?status=pending&sort=confidence&order=desc").text) == [
        high,
        middle,
        low,
    ]
    assert _rows(client.get("/worklist?status=signed off").text) == [signed]
    assert _rows(client.get("/worklist?status=failed").text) == [failed]
    dated = client.get("/worklist?date_from=2025-02-01&date_to=2025-03-15&sort=study_date&order=asc")
    assert _rows(dated.text) == [high, middle]
    assert _rows(client.get("/worklist?confidence_max=0.6&sort=confidence&order=asc").text) == [
        signed,
        low,
        middle,
    ]
    assert client.get("/worklist?status=bogus").status_code == 422
    assert "CONF LOW" in everything.text and "2025-01-10" in everything.text


def test_worklist_puts_results_to_check_first_and_says_why(client: TestClient, seeded: Seeded) -> None:
    """Results QC asks to check lead the worklist in any sort, with their reasons in words; a note
    alone (basal slices left out) leaves a result ok."""
    ok_first = seed_result(
        seeded, patient_name="OK^FIRST", qc_flags=("basal_slices_excluded",), confidence=0.9
    )
    checked = seed_result(seeded, patient_name="CHECK^ME", qc_flags=("missing_slices",), confidence=0.95)
    ok_last = seed_result(seeded, patient_name="OK^LAST", confidence=0.5)
    seeded.user("jsmith")
    login(client, "jsmith")
    page = client.get("/worklist")
    assert _rows(page.text) == [checked, ok_last, ok_first]
    assert _rows(client.get("/worklist?sort=confidence&order=asc").text) == [checked, ok_last, ok_first]
    row = page.text[page.text.index("ME CHECK") :]
    row = row[: row.index("</tr>")]
    assert ">check</span>" in row and "Slices missing from the stack" in row
    ok_row = page.text[page.text.index("FIRST OK") :]
    assert ">ok</span>" in ok_row[: ok_row.index("</tr>")]


@pytest.mark.parametrize(
    ("recorded", "words"),
    [
        ("per_phase", "basal slices judged per phase (SCMR)"),
        ("every_phase", "basal slices only where ventricle in every phase"),
        (None, "basal rule not recorded"),
        ("a_later_rule", "a_later_rule"),
    ],
)
def test_the_recorded_basal_rule_reads_in_words(recorded: str | None, words: str) -> None:
    """As the study page, the picture and ``worklist show`` say it: a result an older node measured
    says it has none, and a rule only a newer node knows is shown as recorded."""
    assert basal_rule_words(recorded) == words


def test_study_page_shows_values_flags_in_words_and_history(client: TestClient, seeded: Seeded) -> None:
    """The study page shows values with units, QC flags in words, the curve, the SC and deliveries."""
    result_id = seed_result(seeded, qc_flags=("missing_slices",), secondary_capture=True)
    seeded.user("jsmith")
    login(client, "jsmith")
    page = client.get(f"/results/{result_id}")
    assert "150.0 mL" in page.text and "60.0 %" in page.text and "110.0 g" in page.text
    assert "Slices are missing from the stack (a gap in slice positions)." in page.text
    assert ">check</span> Quality control: check this result" in page.text
    assert "lvseg-unet 1.0.0 · basal slices judged per phase (SCMR)" in page.text
    assert "<svg" in page.text and "ED 150 mL" in page.text and "ES 60 mL" in page.text
    assert "Draft SR (unverified)" in page.text and "Secondary capture" in page.text
    picture = client.get(f"/results/{result_id}/sc.png")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    (view,) = seeded.parts.audit.entries(action=AuditAction.VIEW_STUDY)
    assert (view.actor, view.target) == ("jsmith", result_id)
    assert client.get("/results/00000000-0000-0000-0000-000000000000").status_code == 404


def test_after_sign_off_the_page_shows_the_verified_picture_and_readable_kinds(
    client: TestClient, seeded: Seeded
) -> None:
    """Once the verified secondary capture is made, the page shows it (not the red draft) and the
    deliveries table names each object in words."""
    result_id = seed_result(seeded, secondary_capture=True)
    seeded.user("jsmith")
    login(client, "jsmith")
    draft_png = client.get(f"/results/{result_id}/sc.png").content
    draft_path = seeded.parts.store.outbox_path(result_id, OutboxKind.SC)
    assert draft_path is not None
    verified = pydicom.dcmread(seeded.settings.storage.data_dir / "outbox" / draft_path)
    pixels = verified.pixel_array.copy()
    pixels[:, :] = (0, 160, 0)
    verified.PixelData = pixels.tobytes()
    verified.SOPInstanceUID = generate_uid()
    item = OutgoingObject(
        str(verified.SOPInstanceUID), str(verified.SOPClassUID), str(verified.StudyInstanceUID),
        OutboxKind.VERIFIED_SC, result_id,
    )  # fmt: skip
    seeded.outbox.add(item, encode(verified), [PACS], seeded.clock.now())
    shown = client.get(f"/results/{result_id}/sc.png").content
    assert shown != draft_png
    assert Image.open(io.BytesIO(shown)).convert("RGB").getpixel((5, 5)) == (0, 160, 0)
    page = client.get(f"/results/{result_id}").text
    assert "Verified secondary capture" in page and "verified_sc" not in page


def test_operations_endpoints_need_no_login(client: TestClient, seeded: Seeded) -> None:
    """/healthz, /readyz and /metrics answer without a session; metrics count results by review status."""
    seed_result(seeded)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'dicomnode_results{status="pending"} 1.0' in metrics.text
    assert 'dicomnode_deliveries{state="pending"} 1.0' in metrics.text
    for name in ("associations", "instances_received", "studies_processed", "delivery_attempts"):
        assert f"# TYPE dicomnode_{name}_total counter" in metrics.text or f"dicomnode_{name}" in metrics.text


def test_readyz_fails_when_a_check_fails(seeded: Seeded) -> None:
    """/readyz answers 503 and names the failing check when the model is not loaded."""
    app = build_app(seeded.settings, seeded.parts, seeded.metrics, seeded.clock, {"model": lambda: False})
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "checks": {"model": False}}


def test_trusted_proxy_header_logs_in_only_from_the_proxy(seeded: Seeded) -> None:
    """The trusted user header opens a session only when it comes from a trusted proxy."""
    seeded.user("jsmith")
    for proxies, expected in ((["testclient"], 200), (["10.0.0.1"], 303)):
        web = WebSettings(trusted_user_header="X-Remote-User", trusted_proxies=proxies)
        settings = seeded.settings.model_copy(update={"web": web})
        app = build_app(settings, seeded.parts, seeded.metrics, seeded.clock, {})
        with TestClient(app, follow_redirects=False) as client:
            response = client.get("/worklist", headers={"X-Remote-User": "jsmith"})
        assert response.status_code == expected


def test_login_never_redirects_off_site(client: TestClient, seeded: Seeded) -> None:
    """A login's ``next`` pointing at another site is replaced by the worklist."""
    seeded.user("jsmith")
    form = client.get("/login?next=//evil.example/")
    assert 'value="//evil.example/"' not in form.text
    response = client.post(
        "/login",
        data={
            "username": "jsmith",
            "password": PASSWORD,
            "csrf_token": csrf_token(form),
            "next": "//evil.example/",
        },
    )
    assert response.headers["location"] == "/worklist"


@pytest.mark.parametrize("path", ["/static/style.css"])
def test_assets_are_served_by_the_node(client: TestClient, path: str) -> None:
    """The stylesheet comes from the node itself, and pages reference nothing off-site."""
    assert client.get(path).status_code == 200
    page = client.get("/login")
    assert "http://" not in page.text and "https://" not in page.text


def test_every_person_is_named_one_way(client: TestClient, seeded: Seeded) -> None:
    """A reviewer stored as the PN ``Smith^Jane`` and a patient ``DOE^JANE`` read "Jane Smith" and
    "JANE DOE" on the worklist, the study page and the banner; no caret shows."""
    result_id = seed_result(seeded, patient_name="DOE^JANE")
    seeded.user("jsmith", full_name="Smith^Jane")
    login(client, "jsmith")
    page = client.get(f"/results/{result_id}")
    assert client.post(f"/results/{result_id}/sign", data={"csrf_token": csrf_token(page)}).status_code == 303
    study = client.get(f"/results/{result_id}").text
    worklist = client.get("/worklist").text
    assert "SIGNED OFF BY JANE SMITH" in study and "<strong>Jane Smith</strong>" in study
    assert "Jane Smith" in worklist and "JANE DOE" in worklist and "JANE DOE" in study
    assert "^" not in study and "^" not in worklist
