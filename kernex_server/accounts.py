"""Dashboard accounts: users with argon2 password hashes, roles like tokens, and lockout.

A user has a name, a role (viewer < operator < admin, as ``kernex_server.auth.Role``)
and a password stored only as an argon2id hash. ``LOCK_AFTER`` wrong passwords in a row
lock the account for ``LOCK_SECONDS``; a successful login (or a new password) clears the
count. A disabled user cannot log in and its sessions end at their next request; a new
password ends every session issued before it (``password_changed_at``).

Acts of a signed-in user are audited as ``user:<name>`` (``actor_of``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kernex_server.models import User
from kernex_server.tokens import TokenIdentity

LOCK_AFTER = 5  # wrong passwords in a row
LOCK_SECONDS = 15 * 60
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # argon2 takes any length; this bounds the work per login attempt
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
ROLES = ("viewer", "operator", "admin")
USER_PREFIX = "user:"

_hasher = PasswordHasher()
# checked when the name is unknown, so a wrong name costs what a wrong password costs
_DUMMY_HASH = _hasher.hash("kernex-no-such-user")


class AccountError(Exception):
    """A refused account change or login; ``status`` for the HTTP answer."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status


class LoginRefusedError(AccountError):
    """Wrong name or password, a disabled or a locked account. ``reason`` is for the audit
    log only; people see ``message``, which does not say whether the name exists."""

    def __init__(self, reason: str, message: str = "wrong name or password") -> None:
        super().__init__(message, status=401)
        self.reason = reason


@dataclass(frozen=True)
class UserIdentity:
    id: int
    name: str
    role: str
    password_changed_at: float

    @property
    def actor(self) -> str:
        return actor_of(self.name)

    def as_token_identity(self) -> TokenIdentity:
        """The caller as the admin plane's handlers and the auditor know it."""
        return TokenIdentity(self.actor, self.role, 0)


def actor_of(name: str) -> str:
    return f"{USER_PREFIX}{name}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise AccountError(
            f"user name {name!r} is not valid",
            hint="Use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(
            f"password is shorter than {MIN_PASSWORD} characters",
            hint="Choose a longer password (a passphrase of a few words works well).",
        )
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password is longer than {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def user_dict(row: User) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "disabled": row.disabled_at is not None,
        "locked_until": row.locked_until,
        "last_login_at": row.last_login_at,
    }


class Accounts:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add(
        self, name: str, role: str, password: str, *, now: float, created_by: str | None = None
    ) -> dict[str, Any]:
        check_name(name)
        check_role(role)
        hashed = hash_password(password)
        taken = AccountError(
            f"a user named {name!r} exists already",
            hint="Pick another name, or change that user's password (`kernex users passwd`).",
            status=409,
        )
        try:
            with self.sessions.begin() as s:
                if s.scalar(select(User.id).where(User.name == name)) is not None:
                    raise taken
                row = User(
                    name=name,
                    role=role,
                    password_hash=hashed,
                    created_at=now,
                    created_by=created_by,
                    password_changed_at=now,
                    failed_logins=0,
                )
                s.add(row)
                s.flush()
                return user_dict(row)
        except IntegrityError as exc:  # a concurrent add of the same name won
            raise taken from exc

    def list(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [user_dict(r) for r in s.scalars(select(User).order_by(User.id))]

    def _named(self, s: Session, name: str) -> User:
        row = s.scalar(select(User).where(User.name == name))
        if row is None:
            raise AccountError(f"no user {name!r}", hint="See `kernex users list`.", status=404)
        return row

    def set_disabled(self, name: str, disabled: bool, *, now: float) -> dict[str, Any]:
        with self.sessions.begin() as s:
            row = self._named(s, name)
            row.disabled_at = (row.disabled_at or now) if disabled else None
            return user_dict(row)

    def set_password(self, name: str, password: str, *, now: float) -> dict[str, Any]:
        """A new password: older sessions end, and a lockout is lifted."""
        hashed = hash_password(password)
        with self.sessions.begin() as s:
            row = self._named(s, name)
            row.password_hash = hashed
            row.password_changed_at = now
            row.failed_logins = 0
            row.locked_until = None
            return user_dict(row)

    def identity(self, user_id: int) -> UserIdentity | None:
        """The user behind a session, if it may still act (not disabled)."""
        with self.sessions() as s:
            row = s.get(User, user_id)
            if row is None or row.disabled_at is not None:
                return None
            return UserIdentity(row.id, row.name, row.role, row.password_changed_at)

    def login(self, name: str, password: str, *, now: float) -> UserIdentity:
        """Check a password; count failures and lock after ``LOCK_AFTER`` in a row."""
        refused: LoginRefusedError | None = None
        with self.sessions.begin() as s:
            row = s.scalar(select(User).where(User.name == name)) if name else None
            if row is None:
                _verify(_DUMMY_HASH, password)
                refused = LoginRefusedError("unknown user")
            elif row.locked_until is not None and row.locked_until > now:
                refused = LoginRefusedError(
                    "locked", "account is locked after too many wrong passwords; try later"
                )
            elif not _verify(row.password_hash, password):
                row.failed_logins = (row.failed_logins or 0) + 1
                refused = LoginRefusedError("wrong password")
                if row.failed_logins >= LOCK_AFTER:
                    row.locked_until = now + LOCK_SECONDS
                    row.failed_logins = 0
                    refused = LoginRefusedError("wrong password; locked")
            elif row.disabled_at is not None:
                refused = LoginRefusedError("disabled", "account is disabled; ask an admin")
            else:
                row.failed_logins = 0
                row.locked_until = None
                row.last_login_at = now
                if _hasher.check_needs_rehash(row.password_hash):
                    row.password_hash = _hasher.hash(password)
                found = UserIdentity(row.id, row.name, row.role, row.password_changed_at)
        if refused is not None:
            raise refused
        return found


def _verify(hashed: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
