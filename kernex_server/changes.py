"""Changes seen by every server process sharing one PostgreSQL database.

Each process keeps what the hot path needs in memory (signed manifests, device keys and
states, the deployed revision's fleet). When one process commits a change to those, the
others must see it within a second:

- ``ChangeRecorder`` watches the ORM sessions: a transaction that adds or changes a
  ``Device``, a ``DeviceManifest``, a deployed ``Revision`` or a ``Rollout`` sends, from
  inside that same transaction, ``pg_notify`` on the deployment's channel (so the
  notification leaves only when the change is committed, and never without it).
- ``ChangeListener`` holds one extra connection per process (psycopg, autocommit,
  ``LISTEN``) and hands each other process's notification to a callback. Every
  ``check_interval`` seconds, and after a reconnect, it also reads a cheap fingerprint of
  the shared state (deployed revision, newest deployment, device changes); a change there
  that no notification announced (a notification lost with a dropped connection) is
  handed on as "everything may have changed".

The channel is derived from the schema (``kx_`` + 24 hex digits of its MD5), so separate
deployments in one database (a schema each) never hear each other. SQLite serves one
process and uses none of this.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from kernex_core.protocol import EnrollmentState
from kernex_server.models import Device, DeviceManifest, Revision, Rollout

log = logging.getLogger("kernex.server.changes")

CHANNEL_SQL = "SELECT 'kx_' || left(md5(current_schema()), 24)"
NOTIFY_SQL = "SELECT pg_notify('kx_' || left(md5(current_schema()), 24), :payload)"
# What the periodic check compares; a change nobody announced means a lost notification.
FINGERPRINT_SQL = (
    "SELECT (SELECT max(id) FROM revisions WHERE state = 'deployed'),"
    " (SELECT max(id) FROM deployments), (SELECT max(issued_at) FROM device_manifests),"
    " (SELECT count(*) FROM devices), (SELECT max(updated_at) FROM devices),"
    " (SELECT max(updated_at) FROM rollouts)"
)
MAX_IDS = 50  # more changed devices than this are announced as "all" (NOTIFY < 8000 B)
_KEY = "kx_changes"


@dataclass
class Change:
    """What one committed transaction changed. ``devices``: devices whose row changed
    (key, state, labels); ``manifests``: devices whose signed manifest changed. None
    means "any device"."""

    origin: str = ""
    devices: set[str] | None = field(default_factory=set)
    manifests: set[str] | None = field(default_factory=set)
    deployed: bool = False  # a new revision was deployed
    rollouts: bool = False

    def empty(self) -> bool:
        return not (self.devices or self.manifests or self.deployed or self.rollouts) and (
            self.devices is not None and self.manifests is not None
        )

    def payload(self) -> str:
        return json.dumps(
            {
                "o": self.origin,
                "d": _ids(self.devices),
                "m": _ids(self.manifests),
                "v": int(self.deployed),
                "r": int(self.rollouts),
            },
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, payload: str) -> Change:
        """A notification's payload; anything unreadable means "everything changed"."""
        try:
            doc = json.loads(payload)
            return cls(
                str(doc.get("o", "")),
                _read_ids(doc.get("d")),
                _read_ids(doc.get("m")),
                bool(doc.get("v")),
                bool(doc.get("r")),
            )
        except (ValueError, TypeError, AttributeError):
            return everything()


def _ids(ids: set[str] | None) -> Any:
    return "*" if ids is None or len(ids) > MAX_IDS else sorted(ids)


def _read_ids(raw: Any) -> set[str] | None:
    return None if raw == "*" else {str(d) for d in raw or ()}


def everything() -> Change:
    return Change(devices=None, manifests=None, deployed=True, rollouts=True)


class ChangeRecorder:
    """Sends a notification from every transaction that changes shared serving state."""

    def __init__(self, sessions: sessionmaker[Session], origin: str) -> None:
        self.origin = origin
        event.listen(sessions, "after_flush", self._after_flush)
        event.listen(sessions, "before_commit", self._before_commit)

    @staticmethod
    def _after_flush(session: Session, _context: Any) -> None:
        change: Change = session.info.setdefault(_KEY, Change())
        for obj in (*session.new, *session.dirty, *session.deleted):
            if isinstance(obj, Device) and change.devices is not None:
                change.devices.add(obj.id)
            elif isinstance(obj, DeviceManifest) and change.manifests is not None:
                change.manifests.add(obj.device_id)
            elif isinstance(obj, Revision):
                change.deployed |= obj.state == "deployed"
            elif isinstance(obj, Rollout):
                change.rollouts = True

    def _before_commit(self, session: Session) -> None:
        session.flush()  # the last flush's objects count too
        change: Change | None = session.info.pop(_KEY, None)
        if change is None or change.empty():
            return
        change.origin = self.origin
        session.execute(text(NOTIFY_SQL), {"payload": change.payload()})


def new_origin() -> str:
    return secrets.token_hex(6)


Handler = Callable[[Change], Awaitable[None]]


class ChangeListener:
    """``LISTEN`` on the deployment's channel; ``run`` never returns (cancel it)."""

    def __init__(
        self,
        engine: Engine,
        schema: str,
        origin: str,
        handler: Handler,
        *,
        check_interval: float = 5.0,
        retry_interval: float = 2.0,
    ) -> None:
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.schema = schema
        self.origin = origin
        self.handler = handler
        self.check_interval = check_interval
        self.retry_interval = retry_interval
        self.engine = engine
        self.connected = anyio.Event()  # set once LISTEN is in place (tests wait on it)
        self._fingerprint: tuple[Any, ...] | None = None
        self._down = False

    async def run(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception as exc:  # the database went away: keep serving, retry
                if not self._down:  # the outage is logged once, by kernex_server.outage
                    log.info("change listener lost the database (%s); retrying", exc)
                self._down = True
            await anyio.sleep(self.retry_interval)

    async def _listen(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            if self.schema:
                await conn.execute(f"SET search_path TO {self.schema}")  # checked by make_engine
            cur = await conn.execute(CHANNEL_SQL)
            row = await cur.fetchone()
            channel = str(row[0]) if row else "kx_"
            await conn.execute(f'LISTEN "{channel}"')
            self.connected.set()
            if self._down:
                log.info("change listener is back")
            self._down = False
            # whatever happened while nobody listened (first start: nothing to do)
            await self._check(conn, announce=self._fingerprint is not None)
            while True:
                got = None
                async for note in conn.notifies(timeout=self.check_interval, stop_after=1):
                    got = Change.parse(note.payload)
                if got is None:
                    await self._check(conn, announce=True)
                    continue
                await self._fingerprint_of(conn)  # announced: not a lost change
                if got.origin != self.origin:  # this process applied its own already
                    await self._hand_over(got)

    async def _fingerprint_of(self, conn: Any) -> tuple[Any, ...]:
        cur = await conn.execute(FINGERPRINT_SQL)
        row = await cur.fetchone()
        self._fingerprint = tuple(row) if row else ()
        return self._fingerprint

    async def _check(self, conn: Any, *, announce: bool) -> None:
        before = self._fingerprint
        now = await self._fingerprint_of(conn)
        if announce and before is not None and now != before:
            log.info("shared state changed without a notification; reloading")
            await self._hand_over(everything())

    async def _hand_over(self, change: Change) -> None:
        try:
            await self.handler(change)
        except BaseException:
            self._fingerprint = ("unapplied",)  # the next check reloads everything
            raise


def served_manifests(sessions: sessionmaker[Session], device_ids: set[str]) -> list[DeviceManifest]:
    """The stored manifests of those of ``device_ids`` that are accepted (to serve)."""
    ids = sorted(device_ids)
    out: list[DeviceManifest] = []
    with sessions() as s:
        for start in range(0, len(ids), 500):
            out.extend(
                s.scalars(
                    select(DeviceManifest)
                    .join(Device, Device.id == DeviceManifest.device_id)
                    .where(Device.state == EnrollmentState.ACCEPTED.value)
                    .where(DeviceManifest.device_id.in_(ids[start : start + 500]))
                )
            )
    return out
