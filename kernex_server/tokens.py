"""Admin tokens (``kx_...``, with a role) and enrollment tokens (``kxe_...``): made,
listed, revoked and checked. Only a token's SHA-256 is stored; the secret is shown once.

``TokenStore`` is one part of ``kernex_server.store.Store``, over the same sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kernex_server.models import ApiToken, EnrollmentToken

TOKEN_PREFIX = "kx_"  # noqa: S105 - a name, not a secret
ENROLL_TOKEN_PREFIX = "kxe_"  # noqa: S105 - a name, not a secret


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenIdentity:
    """Who an admin-plane bearer token belongs to."""

    name: str
    role: str
    id: int = 0


class TokenNameTakenError(Exception):
    """An admin token of that name exists already."""


class TokenStore:
    sessions: sessionmaker[Session]

    def create_enrollment_token(
        self,
        name: str,
        *,
        now: float,
        expires_at: float | None,
        max_uses: int | None,
        created_by: str,
    ) -> tuple[str, dict[str, Any]]:
        token = new_token(ENROLL_TOKEN_PREFIX)
        with self.sessions.begin() as s:
            row = EnrollmentToken(
                name=name,
                token_hash=hash_token(token),
                created_at=now,
                created_by=created_by,
                expires_at=expires_at,
                max_uses=max_uses,
                uses=0,
            )
            s.add(row)
            s.flush()
            return token, _enroll_token_dict(row)

    def list_enrollment_tokens(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id.desc()))
            return [_enroll_token_dict(r) for r in rows]

    def revoke_enrollment_token(self, token_id: int, *, now: float) -> bool:
        with self.sessions.begin() as s:
            row = s.get(EnrollmentToken, token_id)
            if row is None:
                return False
            row.revoked_at = row.revoked_at or now
            return True

    # -- admin tokens ------------------------------------------------------------------

    def create_api_token(
        self,
        name: str,
        role: str,
        *,
        now: float,
        expires_at: float | None = None,
        created_by: str | None = None,
    ) -> str:
        return self.create_api_token_row(
            name, role, now=now, expires_at=expires_at, created_by=created_by
        )[0]

    def create_api_token_row(
        self,
        name: str,
        role: str,
        *,
        now: float,
        expires_at: float | None = None,
        created_by: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A new token (the secret, shown once) and its record; the name must be new."""
        token = new_token(TOKEN_PREFIX)
        try:
            with self.sessions.begin() as s:
                if s.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
                    raise TokenNameTakenError(name)
                row = ApiToken(
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    created_at=now,
                    created_by=created_by,
                    expires_at=expires_at,
                )
                s.add(row)
                s.flush()
                return token, _api_token_dict(row)
        except IntegrityError as exc:  # a concurrent create of the same name won
            raise TokenNameTakenError(name) from exc

    def list_api_tokens(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [_api_token_dict(r) for r in s.scalars(select(ApiToken).order_by(ApiToken.id))]

    def revoke_api_token(self, token_id: int, *, now: float) -> dict[str, Any] | None:
        with self.sessions.begin() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                return None
            row.revoked_at = row.revoked_at or now
            return _api_token_dict(row)

    def count_api_tokens(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(ApiToken)) or 0)

    def authenticate_token(self, token: str, *, now: float) -> TokenIdentity | None:
        with self.sessions.begin() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
            if row is None or row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            if row.last_used_at is None or now - row.last_used_at > 60:
                row.last_used_at = now
            return TokenIdentity(row.name, row.role, row.id)


def _enroll_token_dict(row: EnrollmentToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "expires_at": row.expires_at,
        "max_uses": row.max_uses,
        "uses": row.uses,
        "revoked_at": row.revoked_at,
    }


def _api_token_dict(row: ApiToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "last_used_at": row.last_used_at,
        "revoked": row.revoked_at is not None,
        "revoked_at": row.revoked_at,
    }
