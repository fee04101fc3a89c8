"""Users, password hashing, failed-login back-off and sessions, with a manual clock (no sleeping)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from node.accounts.errors import InvalidAccount, InvalidCredentials, LoginBlocked, UnknownUser, UserExists
from node.accounts.users import Role
from node.config import AuthSettings
from node.store.audit import AuditAction
from node.store.schema import users
from node.web.app import http_status
from tests.review.seed import PASSWORD, Seeded

SESSION = timedelta(hours=1)


def _login(seeded: Seeded, name: str, password: str, address: str = "10.0.0.1") -> None:
    seeded.parts.accounts.authenticate(name, password, address=address, now=seeded.clock.now(), via="test")


def test_password_is_stored_only_as_an_argon2id_hash(seeded: Seeded) -> None:
    """A new user's password is kept as a salted Argon2id hash that verifies, never as the password."""
    seeded.user("jsmith")
    with seeded.index.engine.connect() as connection:
        stored = connection.execute(
            select(users.c.password_hash).where(users.c.name == "jsmith")
        ).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    _login(seeded, "jsmith", PASSWORD)
    with pytest.raises(InvalidCredentials):
        _login(seeded, "jsmith", PASSWORD + "x")


def test_unknown_user_and_wrong_password_get_the_same_answer(seeded: Seeded) -> None:
    """An unknown user name is refused with the same error and message as a wrong password."""
    seeded.user("jsmith")
    with pytest.raises(InvalidCredentials) as unknown:
        _login(seeded, "nobody", PASSWORD)
    with pytest.raises(InvalidCredentials) as wrong:
        _login(seeded, "jsmith", "not the password at all")
    assert str(unknown.value) == str(wrong.value)
    assert http_status(unknown.value) == 401


def test_failed_logins_back_off_exponentially_per_user(seeded: Seeded) -> None:
    """After the free failures each further failure doubles the wait, even for the right password."""
    settings = AuthSettings()
    seeded.user("jsmith")
    for attempt in range(settings.free_failures):  # from changing addresses: only the user's count matters
        with pytest.raises(InvalidCredentials):
            _login(seeded, "jsmith", "wrong password!", address=f"10.1.0.{attempt}")
    _login(seeded, "jsmith", PASSWORD, address="10.2.0.1")  # free failures do not block; success clears
    for attempt in range(settings.free_failures + 1):
        with pytest.raises(InvalidCredentials):
            _login(seeded, "jsmith", "wrong password!", address=f"10.3.0.{attempt}")
    with pytest.raises(LoginBlocked) as blocked:
        _login(seeded, "jsmith", PASSWORD, address="10.4.0.1")
    seeded.clock.advance(blocked.value.retry_after_s)
    with pytest.raises(InvalidCredentials):
        _login(seeded, "jsmith", "wrong password!", address="10.4.0.2")
    with pytest.raises(LoginBlocked) as blocked_again:
        _login(seeded, "jsmith", PASSWORD, address="10.4.0.3")
    assert [blocked.value.retry_after_s, blocked_again.value.retry_after_s] == [
        settings.backoff_initial_s,
        2 * settings.backoff_initial_s,
    ]
    assert http_status(blocked.value) == 429
    seeded.clock.advance(blocked_again.value.retry_after_s)
    _login(seeded, "jsmith", PASSWORD, address="10.4.0.4")
    _login(seeded, "jsmith", PASSWORD, address="10.4.0.4")  # the success cleared the count


def test_failed_logins_back_off_per_address_across_user_names(seeded: Seeded) -> None:
    """Guessing different user names from one address blocks that address, not other addresses."""
    seeded.user("jsmith")
    for number in range(AuthSettings().free_failures + 1):
        with pytest.raises(InvalidCredentials):
            _login(seeded, f"guess{number}", "whatever password", address="192.0.2.9")
    with pytest.raises(LoginBlocked):
        _login(seeded, "jsmith", PASSWORD, address="192.0.2.9")
    _login(seeded, "jsmith", PASSWORD, address="192.0.2.10")


def test_every_login_outcome_is_audited(seeded: Seeded) -> None:
    """Successful, failed and blocked logins each leave an audit line with the address."""
    seeded.user("jsmith")
    _login(seeded, "jsmith", PASSWORD, address="10.9.9.9")
    for _ in range(AuthSettings().free_failures + 1):
        with pytest.raises(InvalidCredentials):
            _login(seeded, "jsmith", "wrong password!", address="10.9.9.9")
    with pytest.raises(LoginBlocked):
        _login(seeded, "jsmith", PASSWORD, address="10.9.9.9")
    actions = [entry.action for entry in reversed(seeded.parts.audit.entries())]
    assert actions == [
        AuditAction.USER_ADD,
        AuditAction.LOGIN,
        *[AuditAction.LOGIN_FAILED] * (AuthSettings().free_failures + 1),
        AuditAction.LOGIN_BLOCKED,
    ]
    assert {
        entry.address for entry in seeded.parts.audit.entries() if entry.action != AuditAction.USER_ADD
    } == {"10.9.9.9"}


def test_disabled_user_cannot_log_in_and_loses_sessions(seeded: Seeded) -> None:
    """Disabling a user refuses their password and ends their open sessions; a reset re-enables them."""
    seeded.user("jsmith")
    accounts = seeded.parts.accounts
    session = accounts.login("jsmith", PASSWORD, address="10.0.0.1", now=seeded.clock.now(), lifetime=SESSION)
    assert accounts.session_user(session.token, seeded.clock.now()) is not None
    accounts.disable("jsmith", actor="admin", address="cli", now=seeded.clock.now())
    assert accounts.session_user(session.token, seeded.clock.now()) is None
    with pytest.raises(InvalidCredentials):
        _login(seeded, "jsmith", PASSWORD)
    accounts.reset_password(
        "jsmith", "another long password", actor="admin", address="cli", now=seeded.clock.now()
    )
    _login(seeded, "jsmith", "another long password")


def test_sessions_expire(seeded: Seeded) -> None:
    """A session is not accepted after its lifetime."""
    seeded.user("jsmith")
    accounts = seeded.parts.accounts
    session = accounts.login("jsmith", PASSWORD, address="10.0.0.1", now=seeded.clock.now(), lifetime=SESSION)
    seeded.clock.advance(SESSION.total_seconds() - 1)
    assert accounts.session_user(session.token, seeded.clock.now()) is not None
    seeded.clock.advance(1)
    assert accounts.session_user(session.token, seeded.clock.now()) is None


def test_user_changes_are_audited_and_validated(seeded: Seeded) -> None:
    """User changes are audited; duplicate names, short passwords and unknown users are refused."""
    seeded.user("jsmith")
    accounts = seeded.parts.accounts
    with pytest.raises(UserExists):
        seeded.user("jsmith")
    with pytest.raises(InvalidAccount):
        accounts.add_user(
            name="short",
            role=Role.ADMIN,
            full_name="A Admin",
            organization="Org",
            password="short",
            identification_code=None,
            actor="admin",
            address="cli",
            now=seeded.clock.now(),
        )
    with pytest.raises(UnknownUser):
        accounts.disable("nobody", actor="admin", address="cli", now=seeded.clock.now())
    accounts.disable("jsmith", actor="admin", address="cli", now=seeded.clock.now())
    accounts.reset_password(
        "jsmith", "a brand new password", actor="admin", address="cli", now=seeded.clock.now()
    )
    audited = [(entry.action, entry.target, entry.actor) for entry in reversed(seeded.parts.audit.entries())]
    assert audited == [
        (AuditAction.USER_ADD, "jsmith", "test"),
        (AuditAction.USER_DISABLE, "jsmith", "admin"),
        (AuditAction.USER_RESET, "jsmith", "admin"),
    ]
