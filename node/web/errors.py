"""Errors only the web layer raises; like every domain error they carry their HTTP status."""

from __future__ import annotations

from http import HTTPStatus

from node.errors import NodeError


class WebError(NodeError):
    """A request the web app refuses; ``http_status`` is the answer."""

    http_status: HTTPStatus = HTTPStatus.BAD_REQUEST


class LoginRequired(WebError):
    """No valid session: pages redirect to the login form."""

    http_status = HTTPStatus.UNAUTHORIZED


class CsrfRejected(WebError):
    """A state-changing form without the session's CSRF token (or with a wrong one)."""

    http_status = HTTPStatus.FORBIDDEN

    def __init__(self) -> None:
        super().__init__("the form has expired or did not come from this site: reload the page and try again")


class NotFound(WebError):
    """No such result or picture."""

    http_status = HTTPStatus.NOT_FOUND
