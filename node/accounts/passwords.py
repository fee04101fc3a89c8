"""Password hashing with Argon2id (argon2-cffi, RFC 9106 parameters by default)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    """Hash and verify passwords; the hash string carries its own salt and parameters."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        #: Verified against when the user is unknown, so that answer takes as long as a wrong password.
        self._dummy = self._hasher.hash("no user has this password")

    @classmethod
    def fast_for_tests(cls) -> Passwords:
        """Cheap parameters (tests only: they would make stolen hashes easy to crack)."""
        return cls(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))

    def hash(self, password: str) -> str:
        """A new salted Argon2id hash of ``password``."""
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; a None hash (unknown user) costs the same and fails."""
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
