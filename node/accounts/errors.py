"""Errors of account operations (the web app answers each with an HTTP status, :mod:`node.web.app`)."""

from __future__ import annotations

from node.errors import NodeError


class AccountError(NodeError):
    """An account operation was refused."""


class InvalidCredentials(AccountError):
    """Unknown user, wrong password or disabled account (deliberately not told apart)."""

    def __init__(self) -> None:
        super().__init__("unknown user name or wrong password")


class LoginBlocked(AccountError):
    """Too many failed logins for this user or from this address: try again later."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many failed logins: try again in {max(1, round(retry_after_s))} s")


class UserExists(AccountError):
    """A user of that name already exists."""


class UnknownUser(AccountError):
    """No user of that name."""


class InvalidAccount(AccountError):
    """A user name, role, name or password that does not meet the rules."""
