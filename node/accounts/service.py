"""Account operations with their rules and audit lines: user management, login, logout.

The web app and the CLI both come through here, so a login from either is backed off and audited
the same way. ``actor`` is the user name (or ``cli:<OS user>`` for an administrator at the console)
and ``address`` the client address (``cli`` at the console).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from node.accounts.backoff import LoginBackoff, address_key, user_key
from node.accounts.errors import InvalidAccount, InvalidCredentials, LoginBlocked, UnknownUser, UserExists
from node.accounts.passwords import Passwords
from node.accounts.sessions import Session, SessionStore
from node.accounts.users import Role, User, UserStore
from node.config import AuthSettings
from node.metrics import NodeMetrics
from node.store.audit import AuditAction, AuditEntry, AuditLog
from node.store.index import Index

#: User names: letters, digits and ``._@-``, 1-64 characters.
USER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
#: DICOM LO (Verifying Organization) holds 64 characters; names are kept to the same length.
MAX_NAME_CHARS = 64
#: Longer passwords only cost hashing time.
MAX_PASSWORD_CHARS = 1024


def _clean_text(value: str, what: str) -> str:
    text = " ".join(value.split())
    if not text:
        raise InvalidAccount(f"{what} is required")
    if len(text) > MAX_NAME_CHARS or "\\" in text:
        raise InvalidAccount(f"{what} is at most {MAX_NAME_CHARS} characters, without backslash")
    return text


class AccountService:
    """Users, logins and sessions over the index."""

    def __init__(
        self,
        index: Index,
        settings: AuthSettings,
        passwords: Passwords | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.users = UserStore(index)
        self.sessions = SessionStore(index)
        self.audit = AuditLog(index)
        self._backoff = LoginBackoff(index, settings)
        self._settings = settings
        self._passwords = passwords or Passwords()
        self._metrics = metrics

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.logins.labels(outcome=outcome).inc()

    # -- user management (audited) -------------------------------------------------------------------

    def _check_password(self, password: str) -> None:
        if len(password) < self._settings.min_password_chars:
            raise InvalidAccount(f"a password needs at least {self._settings.min_password_chars} characters")
        if len(password) > MAX_PASSWORD_CHARS:
            raise InvalidAccount(f"a password has at most {MAX_PASSWORD_CHARS} characters")

    def add_user(
        self,
        *,
        name: str,
        role: Role,
        full_name: str,
        organization: str,
        password: str,
        identification_code: str | None,
        actor: str,
        address: str,
        now: datetime,
    ) -> User:
        """Create a user.

        Raises
        ------
        InvalidAccount
            A bad name, empty full name or organization, or a short password.
        UserExists
            The name is taken.
        """
        if not USER_NAME.match(name):
            raise InvalidAccount("a user name is 1-64 letters, digits or . _ @ -")
        full_name = _clean_text(full_name, "full name")
        organization = _clean_text(organization, "organization")
        code = _clean_text(identification_code, "identification code") if identification_code else None
        self._check_password(password)
        entry = AuditEntry(
            at=now,
            actor=actor,
            address=address,
            action=AuditAction.USER_ADD,
            target=name,
            details={"role": str(role), "full_name": full_name, "organization": organization},
        )
        added = self.users.add(
            name=name,
            role=role,
            full_name=full_name,
            organization=organization,
            identification_code=code,
            password_hash=self._passwords.hash(password),
            now=now,
            entry=entry,
        )
        if not added:
            raise UserExists(f"user {name!r} already exists")
        user = self.users.get(name)
        if user is None:  # removed in between by another process: not possible through this API
            raise UnknownUser(f"no user {name!r}")
        return user

    def disable(self, name: str, *, actor: str, address: str, now: datetime) -> None:
        """Disable a user and end their sessions (users are never deleted: the audit names them)."""
        entry = AuditEntry(at=now, actor=actor, address=address, action=AuditAction.USER_DISABLE, target=name)
        if not self.users.change(name, {"disabled": True}, now, entry):
            raise UnknownUser(f"no user {name!r}")
        user = self.users.get(name)
        if user is not None:
            self.sessions.end_all(user.id)

    def reset_password(self, name: str, password: str, *, actor: str, address: str, now: datetime) -> None:
        """Set a new password (and re-enable the user), ending their sessions and clearing back-off."""
        self._check_password(password)
        entry = AuditEntry(at=now, actor=actor, address=address, action=AuditAction.USER_RESET, target=name)
        changed = self.users.change(
            name, {"password_hash": self._passwords.hash(password), "disabled": False}, now, entry
        )
        if not changed:
            raise UnknownUser(f"no user {name!r}")
        user = self.users.get(name)
        if user is not None:
            self.sessions.end_all(user.id)
        self._backoff.succeeded(user_key(name))

    # -- authentication (audited) --------------------------------------------------------------------

    def authenticate(self, name: str, password: str, *, address: str, now: datetime, via: str) -> User:
        """Check a user name and password, with back-off; audit the outcome.

        Raises
        ------
        LoginBlocked
            Too many recent failures for this user name or from this address.
        InvalidCredentials
            Unknown user, wrong password or disabled user (one answer for all three).
        """
        name = name.strip()[:MAX_NAME_CHARS]
        keys = (user_key(name), address_key(address))
        wait = self._backoff.blocked_for(keys, now)
        if wait > 0:
            self.audit.record(
                AuditEntry(
                    at=now,
                    actor=name or "-",
                    address=address,
                    action=AuditAction.LOGIN_BLOCKED,
                    details={"via": via, "retry_after_s": round(wait, 1)},
                )
            )
            self._count("blocked")
            raise LoginBlocked(wait)
        found = self.users.credentials(name)
        user, password_hash = found if found is not None else (None, None)
        matches = self._passwords.verify(password_hash, password[:MAX_PASSWORD_CHARS])
        if user is None or not matches or user.disabled:
            self._backoff.failed(keys, now)
            reason = "unknown user" if user is None else "disabled" if matches else "wrong password"
            self.audit.record(
                AuditEntry(
                    at=now,
                    actor=name or "-",
                    address=address,
                    action=AuditAction.LOGIN_FAILED,
                    details={"via": via, "reason": reason},
                )
            )
            self._count("failure")
            raise InvalidCredentials()
        self._backoff.succeeded(keys[0])
        self._count("success")
        self.audit.record(
            AuditEntry(
                at=now, actor=user.name, address=address, action=AuditAction.LOGIN, details={"via": via}
            )
        )
        return user

    def login(self, name: str, password: str, *, address: str, now: datetime, lifetime: timedelta) -> Session:
        """Authenticate and open a browser session."""
        user = self.authenticate(name, password, address=address, now=now, via="web")
        return self.sessions.create(user, address, now, lifetime)

    def proxy_login(self, name: str, *, address: str, now: datetime, lifetime: timedelta) -> Session | None:
        """Open a session for a user a trusted reverse proxy has authenticated (None: no such user)."""
        user = self.users.get(name.strip())
        if user is None or user.disabled:
            self.audit.record(
                AuditEntry(
                    at=now,
                    actor=name.strip()[:MAX_NAME_CHARS] or "-",
                    address=address,
                    action=AuditAction.LOGIN_FAILED,
                    details={"via": "proxy", "reason": "unknown user" if user is None else "disabled"},
                )
            )
            return None
        self.audit.record(
            AuditEntry(
                at=now, actor=user.name, address=address, action=AuditAction.LOGIN, details={"via": "proxy"}
            )
        )
        return self.sessions.create(user, address, now, lifetime)

    def session_user(self, token: str, now: datetime) -> tuple[Session, User] | None:
        """The session of a cookie token and its (enabled) user."""
        session = self.sessions.find(token, now)
        if session is None:
            return None
        user = self.users.by_id(session.user_id)
        if user is None or user.disabled:
            return None
        return session, user

    def logout(self, session: Session, user: User, *, address: str, now: datetime) -> None:
        """End a session and audit it."""
        self.sessions.end(session.token)
        self.audit.record(AuditEntry(at=now, actor=user.name, address=address, action=AuditAction.LOGOUT))
