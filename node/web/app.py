"""The worklist web app: routes, static files, security headers, and the one place errors become responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from node.accounts.errors import (
    AccountError,
    InvalidAccount,
    InvalidCredentials,
    LoginBlocked,
    UnknownUser,
    UserExists,
)
from node.errors import NodeError
from node.logging import get_logger
from node.review.errors import (
    AlreadyReviewed,
    DraftNotAvailable,
    InvalidReview,
    NotPermitted,
    NotReviewable,
    ResultNotFound,
    ReviewError,
)
from node.web import actions, ops, pages, stow
from node.web.auth import set_session_cookie
from node.web.context import WebContext
from node.web.errors import CsrfRejected, LoginRequired, NotFound, WebError
from node.web.pages import NO_STORE, templates

log = get_logger(__name__)

#: Everything is served by the node: no script at all, styles and images from 'self' only.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


#: How the web app answers each refusal; the most specific class listed wins, anything else is 500.
HTTP_STATUSES: dict[type[NodeError], HTTPStatus] = {
    ReviewError: HTTPStatus.BAD_REQUEST,
    NotPermitted: HTTPStatus.FORBIDDEN,
    ResultNotFound: HTTPStatus.NOT_FOUND,
    NotReviewable: HTTPStatus.CONFLICT,
    AlreadyReviewed: HTTPStatus.CONFLICT,
    DraftNotAvailable: HTTPStatus.CONFLICT,
    InvalidReview: HTTPStatus.UNPROCESSABLE_ENTITY,
    AccountError: HTTPStatus.BAD_REQUEST,
    InvalidCredentials: HTTPStatus.UNAUTHORIZED,
    LoginBlocked: HTTPStatus.TOO_MANY_REQUESTS,
    UserExists: HTTPStatus.CONFLICT,
    UnknownUser: HTTPStatus.NOT_FOUND,
    InvalidAccount: HTTPStatus.UNPROCESSABLE_ENTITY,
    WebError: HTTPStatus.BAD_REQUEST,
    LoginRequired: HTTPStatus.UNAUTHORIZED,
    CsrfRejected: HTTPStatus.FORBIDDEN,
    NotFound: HTTPStatus.NOT_FOUND,
}


def http_status(error: NodeError) -> int:
    """The HTTP status that answers a domain error (:data:`HTTP_STATUSES`, by its class's ancestry)."""
    for kind in type(error).__mro__:
        if kind in HTTP_STATUSES:
            return int(HTTP_STATUSES[kind])
    return int(HTTPStatus.INTERNAL_SERVER_ERROR)


def _refused(request: Request, error: Exception) -> Response:
    """Answer a domain error: a redirect to the login form, the login form again, or an error page."""
    if not isinstance(error, NodeError):  # only registered for NodeError
        raise error
    status = http_status(error)
    if isinstance(error, LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    log.info(
        "request refused",
        method=request.method,
        path=request.url.path,
        status=status,
        error=type(error).__name__,
    )
    if request.url.path == "/login" and request.method == "POST":
        response = actions.login_page(request, status, str(error))
    else:
        response = templates.TemplateResponse(
            request,
            "error.html",
            {
                "status": status,
                "phrase": HTTPStatus(status).phrase,
                "message": str(error),
                "back": _back(request),
            },
            status_code=status,
            headers=NO_STORE,
        )
    if isinstance(error, LoginBlocked):
        response.headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return response


def _back(request: Request) -> str:
    path = request.url.path
    if path.startswith("/results/"):
        return "/".join(path.split("/")[:3])
    return "/worklist"


def _invalid(request: Request, error: Exception) -> Response:
    """Answer a malformed form or query (422) with the error page."""
    fields = []
    if isinstance(error, RequestValidationError):
        fields = [".".join(str(part) for part in item["loc"][1:]) for item in error.errors()]
    message = "invalid or missing value: " + ", ".join(name for name in fields if name)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": 422, "phrase": HTTPStatus(422).phrase, "message": message, "back": _back(request)},
        status_code=422,
        headers=NO_STORE,
    )


def create_app(context: WebContext) -> FastAPI:
    """The FastAPI app over one :class:`WebContext` (no global state: tests build one per test)."""
    app = FastAPI(title="dicomnode worklist", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = context
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(ops.router)
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(stow.router)
    app.add_exception_handler(NodeError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        session = getattr(request.state, "new_session", None)
        if session is not None:  # opened for a trusted proxy's user header
            set_session_cookie(response, context, session)
        return response

    return app
