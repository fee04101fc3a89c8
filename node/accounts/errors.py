"""Errors of account operations; each carries the HTTP status the web boundary answers with."""

from __future__ import annotations

from http import HTTPStatus

from node.errors import NodeError


class AccountError(NodeError):
    """An account operation was refused; ``http_status`` says how the web app answers."""

    http_status: HTTPStatus = HTTPStatus.BAD_REQUEST


class InvalidCredentials(AccountError):
    """Unknown user, wrong password or disabled account (deliberately not told apart)."""

    http_status = HTTPStatus.UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__("unknown user name or wrong password")


class LoginBlocked(AccountError):
    """Too many failed logins for this user or from this address: try again later."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many failed logins: try again in {max(1, round(retry_after_s))} s")


class UserExists(AccountError):
    """A user of that name already exists."""

    http_status = HTTPStatus.CONFLICT


class UnknownUser(AccountError):
    """No user of that name."""

    http_status = HTTPStatus.NOT_FOUND


class InvalidAccount(AccountError):
    """A user name, role, name or password that does not meet the rules."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
