"""Replay protection across server processes that share one PostgreSQL database.

Each process checks every signed device request against its own in-memory
``httpsig.NonceCache`` (no database work on the hot path). A request that changes state
(enrollment, a status report: anything but GET) is then also claimed in the shared
``request_nonces`` table: one ``INSERT ... ON CONFLICT DO NOTHING`` of the SHA-256 of key
id and nonce, in autocommit. When the row was there already, another process accepted
the same request: it is a replay, refused with 401.

GET requests (manifest polls, bundle downloads) are checked per process only: a
replayed GET reaching another process within the window changes nothing and returns
only what the original request returned, and it keeps the long poll free of database
writes. ``bench/nonces.py`` measures both checks; docs/security.md has the trade-off.
Rows are deleted once their window has passed (``prune``, every ``PRUNE_SECONDS``).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from kernex_server.models import RequestNonce

PRUNE_SECONDS = 30.0


def nonce_digest(keyid: str, nonce: str) -> str:
    return hashlib.sha256(f"{keyid}\0{nonce}".encode()).hexdigest()


class SharedNonces:
    def __init__(self, engine: Engine, *, window_seconds: float) -> None:
        self.engine = engine
        self.window = window_seconds

    def claim(self, keyid: str, nonce: str, now: float) -> bool:
        """True when no process has used this nonce for this key in the window."""
        stmt = (
            insert(RequestNonce)
            .values(digest=nonce_digest(keyid, nonce), expires_at=now + self.window)
            .on_conflict_do_nothing(index_elements=["digest"])
            .returning(RequestNonce.digest)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None  # None: the row was there

    def prune(self, now: float) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(RequestNonce).where(RequestNonce.expires_at < now)).rowcount
