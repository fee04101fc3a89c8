"""Errors only the web layer raises (answered like every domain error, :mod:`node.web.app`)."""

from __future__ import annotations

from node.errors import NodeError


class WebError(NodeError):
    """A request the web app refuses."""


class LoginRequired(WebError):
    """No valid session: pages redirect to the login form."""


class CsrfRejected(WebError):
    """A state-changing form without the session's CSRF token (or with a wrong one)."""

    def __init__(self) -> None:
        super().__init__("the form has expired or did not come from this site: reload the page and try again")


class NotFound(WebError):
    """No such result or picture."""
