"""The alert outbox: one row per alert and receiver, written in the same transaction as
whatever found the alert, and kept until the receiver answered 2xx (or the server gave
up). A restart or a receiver that is down loses nothing: the loop tries again later.

Rows are unique on ``(receiver, key)``, so an alert found twice (two servers, a pass
retried after an error) is stored once. A row is *claimed* for a short lease before it
is sent, so two servers never send the same row at once; a server that dies mid-send
leaves a lease that runs out, and the row is sent again under the same idempotency key.

Device failures are grouped: the first one opens a row due ``alert_group_seconds`` later,
and every failure until then joins that row; so a receiver gets at most one device alert
per window, listing every device (the first ``MAX_LISTED`` by name, then a count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from kernex_core.timefmt import format_time
from kernex_server.alert_config import DEVICES_FAILED, AlertReceiver
from kernex_server.models import AlertOutbox

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
STATES = (PENDING, DELIVERED, FAILED)
LEASE = 60.0  # seconds a claimed row is left to the server sending it
MAX_LISTED = 50  # devices named in one grouped alert; the rest are counted


@dataclass(frozen=True)
class Alert:
    kind: str
    key: str  # the idempotency key: the same alert always gets the same key
    summary: str  # one line for people (and Slack)
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "created_at": format_time(self.at),
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class Claimed:
    """A row taken for sending: everything the sender needs, outside any session."""

    id: int
    receiver: str
    key: str
    kind: str
    alert: dict[str, Any]
    attempts: int
    created_at: float


def enqueue(
    s: Session, receivers: Iterable[AlertReceiver], alert: Alert, *, due_at: float | None = None
) -> list[AlertOutbox]:
    """Add ``alert`` for every receiver that wants its kind and does not hold its key."""
    wanted = [r.name for r in receivers if r.wants(alert.kind)]
    if not wanted:
        return []
    held = set(
        s.scalars(
            select(AlertOutbox.receiver).where(
                AlertOutbox.key == alert.key, AlertOutbox.receiver.in_(wanted)
            )
        )
    )
    rows = [
        AlertOutbox(
            receiver=name,
            key=alert.key,
            kind=alert.kind,
            alert=alert.document(),
            state=PENDING,
            created_at=alert.at,
            due_at=alert.at if due_at is None else due_at,
            attempts=0,
        )
        for name in wanted
        if name not in held
    ]
    s.add_all(rows)
    return rows


def add_device_failures(
    s: Session,
    receivers: Iterable[AlertReceiver],
    failures: Sequence[Mapping[str, Any]],
    *,
    first_id: int,
    now: float,
    window: float,
) -> None:
    """Join ``failures`` (``device``, ``phase``, ``serial``, ``error``) to each receiver's
    open device alert, or open one due at ``now + window``."""
    for receiver in receivers:
        if not receiver.wants(DEVICES_FAILED):
            continue
        row = s.scalar(
            select(AlertOutbox)
            .where(
                AlertOutbox.receiver == receiver.name,
                AlertOutbox.kind == DEVICES_FAILED,
                AlertOutbox.state == PENDING,
                AlertOutbox.attempts == 0,
                AlertOutbox.due_at > now,
            )
            .order_by(AlertOutbox.id.desc())
            .limit(1)
        )
        if row is None:
            alert = Alert(DEVICES_FAILED, f"{DEVICES_FAILED}:{first_id}", "", now)
            opened = enqueue(s, [receiver], alert, due_at=now + window)
            if not opened:  # already stored by another pass
                continue
            row = opened[0]
        devices = {d["device"]: d for d in row.alert["detail"].get("devices", [])}
        total = int(row.alert["detail"].get("count", len(devices)))
        for failure in failures:
            if failure["device"] not in devices:
                total += 1
            if failure["device"] in devices or len(devices) < MAX_LISTED:
                devices[failure["device"]] = dict(failure)
        listed = sorted(devices.values(), key=lambda d: d["device"])
        row.alert = {
            **row.alert,
            "summary": devices_summary(listed, total),
            "detail": {"devices": listed, "count": total},
        }


def devices_summary(listed: Sequence[Mapping[str, Any]], total: int) -> str:
    names = ", ".join(f"{d['device']} ({d['phase']})" for d in listed[:5])
    more = total - min(len(listed), 5)
    tail = f" and {more} more" if more > 0 else ""
    noun = "device" if total == 1 else "devices"
    return f"{total} {noun} failed or rolled back: {names}{tail}"


def claim_due(s: Session, now: float, *, limit: int = 50, ids: Sequence[int] = ()) -> list[Claimed]:
    """Take up to ``limit`` pending rows that are due (or the rows ``ids``) for sending."""
    query = select(AlertOutbox).where(
        AlertOutbox.state == PENDING,
        or_(AlertOutbox.claimed_until.is_(None), AlertOutbox.claimed_until < now),
    )
    query = query.where(AlertOutbox.id.in_(ids)) if ids else query.where(AlertOutbox.due_at <= now)
    out = []
    for row in s.scalars(query.order_by(AlertOutbox.due_at, AlertOutbox.id).limit(limit)).all():
        taken = s.execute(
            update(AlertOutbox)
            .where(
                AlertOutbox.id == row.id,
                or_(AlertOutbox.claimed_until.is_(None), AlertOutbox.claimed_until < now),
            )
            .values(claimed_until=now + LEASE)
            .execution_options(synchronize_session=False)
        )
        if getattr(taken, "rowcount", 0) == 1:
            out.append(
                Claimed(
                    row.id,
                    row.receiver,
                    row.key,
                    row.kind,
                    dict(row.alert),
                    row.attempts,
                    row.created_at,
                )
            )
    return out


def release(s: Session, ids: Sequence[int]) -> None:
    """Give back claimed rows that were never tried: due again, no attempt counted."""
    s.execute(
        update(AlertOutbox)
        .where(AlertOutbox.id.in_(ids), AlertOutbox.state == PENDING)
        .values(claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def settle(
    s: Session, row_id: int, *, ok: bool, error: str | None, now: float, retry_at: float | None
) -> str:
    """Record one attempt: delivered, pending again at ``retry_at``, or failed (no retry)."""
    state = DELIVERED if ok else PENDING if retry_at is not None else FAILED
    s.execute(
        update(AlertOutbox)
        .where(AlertOutbox.id == row_id)
        .values(
            state=state,
            attempts=AlertOutbox.attempts + 1,
            last_error=None if ok else (error or "")[:1000],
            claimed_until=None,
            delivered_at=now if ok else None,
            due_at=retry_at if retry_at is not None else now,
        )
        .execution_options(synchronize_session=False)
    )
    return state


def counts(s: Session) -> dict[str, int]:
    rows = s.execute(select(AlertOutbox.state, func.count()).group_by(AlertOutbox.state)).all()
    found = {state: int(n) for state, n in rows}
    return {state: found.get(state, 0) for state in STATES}


def oldest_pending(s: Session) -> float | None:
    value = s.scalar(select(func.min(AlertOutbox.created_at)).where(AlertOutbox.state == PENDING))
    return float(value) if value is not None else None


def recent(s: Session, limit: int = 20) -> list[dict[str, Any]]:
    rows = s.scalars(select(AlertOutbox).order_by(AlertOutbox.id.desc()).limit(limit)).all()
    return [
        {
            "id": r.id,
            "receiver": r.receiver,
            "key": r.key,
            "kind": r.kind,
            "summary": r.alert.get("summary", ""),
            "state": r.state,
            "attempts": r.attempts,
            "created_at": format_time(r.created_at),
            "next_attempt_at": format_time(r.due_at) if r.state == PENDING else None,
            "delivered_at": format_time(r.delivered_at) if r.delivered_at else None,
            "last_error": r.last_error,
        }
        for r in rows
    ]


def prune(s: Session, before: float) -> int:
    """Drop delivered and failed rows settled before ``before``."""
    done = s.execute(
        delete(AlertOutbox)
        .where(AlertOutbox.state != PENDING, AlertOutbox.due_at < before)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(done, "rowcount", 0) or 0)
