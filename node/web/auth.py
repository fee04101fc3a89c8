"""Who is asking: the session cookie (or a trusted proxy's user header), and CSRF checks on forms.

Cookies are HttpOnly and SameSite=Strict, Secure when ``web.secure_cookies`` is set (behind TLS).
Every state-changing form carries the session's CSRF token; the login form, which has no session
yet, carries a token that must equal a short-lived login cookie (double submit).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from fastapi import Request
from starlette.responses import Response

from node.accounts.sessions import Session
from node.accounts.users import User
from node.web.context import WebContext
from node.web.errors import CsrfRejected, LoginRequired

SESSION_COOKIE: Final = "dicomnode_session"
LOGIN_CSRF_COOKIE: Final = "dicomnode_login_csrf"
LOGIN_CSRF_SECONDS: Final = 3600


@dataclass(frozen=True)
class Viewer:
    """The logged-in user of a request and their session."""

    user: User
    session: Session


def context_of(request: Request) -> WebContext:
    """The app's :class:`WebContext`."""
    context: WebContext = request.app.state.context
    return context


def client_address(request: Request) -> str:
    """The client's address (uvicorn resolves X-Forwarded-For from ``web.trusted_proxies`` only)."""
    return request.client.host if request.client is not None else "unknown"


def lifetime(context: WebContext) -> timedelta:
    """How long a new session lasts."""
    return timedelta(hours=context.settings.session_hours)


def set_session_cookie(response: Response, context: WebContext, session: Session) -> None:
    """Give the browser its session cookie."""
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int(lifetime(context).total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=context.settings.secure_cookies,
    )


def clear_session_cookie(response: Response, context: WebContext) -> None:
    """Make the browser forget its session cookie."""
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=context.settings.secure_cookies
    )


def new_token() -> str:
    """A fresh random token (login CSRF)."""
    return secrets.token_urlsafe(32)


def set_login_csrf(response: Response, context: WebContext, token: str) -> None:
    """Set the login form's token as the cookie the login POST must bring back."""
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=LOGIN_CSRF_SECONDS,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=context.settings.secure_cookies,
    )


def check_login_csrf(request: Request, submitted: str) -> None:
    """Refuse a login POST whose token differs from its login cookie."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), submitted.encode()):
        raise CsrfRejected()


def check_csrf(viewer: Viewer, submitted: str) -> None:
    """Refuse a form whose CSRF token is not the session's."""
    if not submitted or not hmac.compare_digest(viewer.session.csrf_token.encode(), submitted.encode()):
        raise CsrfRejected()


def _from_proxy(request: Request, context: WebContext, current: Viewer | None) -> Viewer | None:
    header = context.settings.trusted_user_header
    if not header or client_address(request) not in context.settings.trusted_proxies:
        return current
    name = request.headers.get(header, "").strip()
    if not name:
        return current
    if current is not None and current.user.name == name:
        return current
    accounts = context.parts.accounts
    session = accounts.proxy_login(
        name, address=client_address(request), now=context.clock.now(), lifetime=lifetime(context)
    )
    if session is None:
        return None
    found = accounts.session_user(session.token, context.clock.now())
    if found is None:
        return None
    request.state.new_session = session
    return Viewer(user=found[1], session=found[0])


def optional_viewer(request: Request) -> Viewer | None:
    """The request's user, or None when nobody is logged in."""
    context = context_of(request)
    token = request.cookies.get(SESSION_COOKIE)
    found = context.parts.accounts.session_user(token, context.clock.now()) if token else None
    current = Viewer(user=found[1], session=found[0]) if found is not None else None
    return _from_proxy(request, context, current)


def viewer(request: Request) -> Viewer:
    """FastAPI dependency: the logged-in user (else :class:`LoginRequired`, answered by a redirect)."""
    found = optional_viewer(request)
    if found is None:
        raise LoginRequired("log in to see the worklist")
    return found
