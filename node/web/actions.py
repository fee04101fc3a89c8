"""State-changing forms: login, logout, and the review actions (each checks its CSRF token first).

Refusals are raised as domain errors and answered by the one handler in :mod:`node.web.app`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from node.web.auth import (
    Viewer,
    check_csrf,
    check_login_csrf,
    clear_session_cookie,
    client_address,
    context_of,
    lifetime,
    new_token,
    optional_viewer,
    set_login_csrf,
    set_session_cookie,
    viewer,
)
from node.web.forms import AmendForm, CsrfForm, LoginForm, ReasonForm, SignForm
from node.web.pages import NO_STORE, templates

router = APIRouter()
ViewerDep = Annotated[Viewer, Depends(viewer)]


def safe_next(target: str) -> str:
    """A local path to go to after login (never another site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/worklist"
    return target


def login_page(
    request: Request, status_code: int = 200, error: str | None = None, next_path: str = "/worklist"
) -> Response:
    """The login form with a fresh CSRF token (also the answer to a refused login)."""
    context = context_of(request)
    token = new_token()
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"error": error, "next": safe_next(next_path), "csrf_token": token},
        status_code=status_code,
        headers=NO_STORE,
    )
    set_login_csrf(response, context, token)
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/worklist") -> Response:
    """The login form; a logged-in user goes straight on."""
    if optional_viewer(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return login_page(request, next_path=next)


@router.post("/login")
def login(request: Request, form: Annotated[LoginForm, Form()]) -> Response:
    """Check the password (with back-off), open a session, go to the worklist."""
    check_login_csrf(request, form.csrf_token)
    context = context_of(request)
    session = context.parts.accounts.login(
        form.username,
        form.password,
        address=client_address(request),
        now=context.clock.now(),
        lifetime=lifetime(context),
    )
    response = RedirectResponse(safe_next(form.next), status_code=303)
    set_session_cookie(response, context, session)
    return response


@router.post("/logout")
def logout(request: Request, user: ViewerDep, form: Annotated[CsrfForm, Form()]) -> Response:
    """End the session."""
    check_csrf(user, form.csrf_token)
    context = context_of(request)
    context.parts.accounts.logout(
        user.session, user.user, address=client_address(request), now=context.clock.now()
    )
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, context)
    return response


def _back(result_id: str) -> RedirectResponse:
    return RedirectResponse(f"/results/{result_id}", status_code=303)


@router.post("/results/{result_id}/sign")
def sign(request: Request, result_id: str, user: ViewerDep, form: Annotated[SignForm, Form()]) -> Response:
    """Sign off the AI result as it is."""
    check_csrf(user, form.csrf_token)
    context = context_of(request)
    context.parts.service.sign(
        result_id, user.user, client_address(request), context.clock.now(), comment=form.comment or None
    )
    return _back(result_id)


@router.post("/results/{result_id}/amend")
def amend(request: Request, result_id: str, user: ViewerDep, form: Annotated[AmendForm, Form()]) -> Response:
    """Amend EDV and ESV, with a reason."""
    check_csrf(user, form.csrf_token)
    context = context_of(request)
    context.parts.service.amend(
        result_id,
        form.edv_ml,
        form.esv_ml,
        form.reason,
        user.user,
        client_address(request),
        context.clock.now(),
    )
    return _back(result_id)


@router.post("/results/{result_id}/reject")
def reject(
    request: Request, result_id: str, user: ViewerDep, form: Annotated[ReasonForm, Form()]
) -> Response:
    """Reject the AI result, with a reason."""
    check_csrf(user, form.csrf_token)
    context = context_of(request)
    context.parts.service.reject(
        result_id, form.reason, user.user, client_address(request), context.clock.now()
    )
    return _back(result_id)
