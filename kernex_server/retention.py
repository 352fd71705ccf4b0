"""Data retention: drop audit rows, status history, deployments, finished rollouts and
revisions older than the ``retain_*_days`` settings (0 keeps them forever).

The pruner works in short transactions of at most ``prune_batch`` rows, walking each
append-only table in primary-key order (ids grow with time), so it never scans a whole
table under a lock and writers only ever wait for one small batch. What the server still
serves is never pruned:

- a device's current manifest, its current status, and the deployment of its current
  serial;
- the newest revision, the newest deployed one, and every revision a device's current
  manifest or a retained rollout names;
- a rollout that still holds devices (running, paused, halted, aborted), or whose new or
  rollback serial is a device's current serial.

``plan()`` counts what a pass would remove (``kernex server prune --dry-run``);
``prune()`` removes it. The server runs ``prune()`` every ``prune_interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Delete, Table, and_, delete, exists, func, or_, select, true
from sqlalchemy.orm import Session, sessionmaker

from kernex_core.rollout import HOLDING
from kernex_server.models import (
    AuditEntry,
    Deployment,
    DeviceManifest,
    Revision,
    Rollout,
    RolloutDevice,
    StatusReportRow,
)
from kernex_server.settings import Settings

DAY = 86400.0
ROLLOUT_BATCH = 20  # rollouts per transaction: each may have many device rows
KINDS = ("audit", "status_history", "deployments", "rollouts", "revisions")

_audit: Table = AuditEntry.__table__  # type: ignore[assignment]
_history: Table = StatusReportRow.__table__  # type: ignore[assignment]
_deployments: Table = Deployment.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class RetentionPolicy:
    audit_days: float
    status_days: float
    deployment_days: float
    rollout_days: float
    revision_days: float
    batch: int

    @classmethod
    def of(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            audit_days=settings.retain_audit_days,
            status_days=settings.retain_status_days,
            deployment_days=settings.retain_deployments_days,
            rollout_days=settings.retain_rollouts_days,
            revision_days=settings.retain_revisions_days,
            batch=max(1, settings.prune_batch),
        )

    def cutoffs(self, now: float) -> dict[str, float | None]:
        """The time before which each kind of row goes; ``None``: kept forever."""
        days = {
            "audit": self.audit_days,
            "status_history": self.status_days,
            "deployments": self.deployment_days,
            "rollouts": self.rollout_days,
            "revisions": self.revision_days,
        }
        return {k: (now - d * DAY if d > 0 else None) for k, d in days.items()}


def _current_deployment() -> ColumnElement[bool]:
    """The deployment row of a device's current serial."""
    return exists().where(
        DeviceManifest.device_id == _deployments.c.device_id,
        DeviceManifest.serial == _deployments.c.serial,
    )


def _rollout_prunable(cutoff: float) -> ColumnElement[bool]:
    serving = exists().where(
        RolloutDevice.rollout_id == Rollout.id,
        DeviceManifest.device_id == RolloutDevice.device_id,
        or_(
            DeviceManifest.serial == RolloutDevice.new_serial,
            DeviceManifest.serial == RolloutDevice.rollback_serial,
        ),
    )
    return and_(Rollout.state.not_in(HOLDING), Rollout.updated_at < cutoff, ~serving)


def _revision_prunable(s: Session, cutoff: float) -> ColumnElement[bool]:
    newest = s.scalar(select(func.max(Revision.id)))
    deployed = s.scalar(select(func.max(Revision.id)).where(Revision.state == "deployed"))
    keep_ids = [i for i in (newest, deployed) if i is not None]
    return and_(
        Revision.created_at < cutoff,
        Revision.id.not_in(keep_ids) if keep_ids else true(),
        Revision.commit.not_in(select(DeviceManifest.revision)),
        Revision.commit.not_in(select(Rollout.revision)),
        Revision.commit.not_in(
            select(Rollout.previous_revision).where(Rollout.previous_revision.is_not(None))
        ),
    )


class Pruner:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: RetentionPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.clock = clock

    def plan(self) -> dict[str, int]:
        """How many rows of each kind a pass would remove now."""
        cut = self.policy.cutoffs(self.clock())
        out = dict.fromkeys(KINDS, 0)
        with self.sessions() as s:
            if (c := cut["audit"]) is not None:
                out["audit"] = _count(s, _audit, _audit.c.at < c)
            if (c := cut["status_history"]) is not None:
                out["status_history"] = _count(s, _history, _history.c.received_at < c)
            if (c := cut["deployments"]) is not None:
                where = and_(_deployments.c.created_at < c, ~_current_deployment())
                out["deployments"] = _count(s, _deployments, where)
            if (c := cut["rollouts"]) is not None:
                out["rollouts"] = _count(s, Rollout.__table__, _rollout_prunable(c))  # type: ignore[arg-type]
            if (c := cut["revisions"]) is not None:
                where = _revision_prunable(s, c)
                out["revisions"] = _count(s, Revision.__table__, where)  # type: ignore[arg-type]
        return out

    def prune(self) -> dict[str, int]:
        """Remove what ``plan()`` counts, in short transactions; return what went."""
        cut = self.policy.cutoffs(self.clock())
        out = dict.fromkeys(KINDS, 0)
        batch = self.policy.batch
        if (c := cut["audit"]) is not None:
            out["audit"] = self._walk(_audit, _audit.c.at, c, None)
        if (c := cut["status_history"]) is not None:
            out["status_history"] = self._walk(_history, _history.c.received_at, c, None)
        if (c := cut["deployments"]) is not None:
            keep = _current_deployment()
            out["deployments"] = self._walk(_deployments, _deployments.c.created_at, c, keep)
        if (c := cut["rollouts"]) is not None:
            out["rollouts"] = self._rollouts(c, min(batch, ROLLOUT_BATCH))
        if (c := cut["revisions"]) is not None:
            out["revisions"] = self._revisions(c, batch)
        return out

    def _walk(self, table: Table, at: Any, cutoff: float, keep: ColumnElement[bool] | None) -> int:
        """Delete old rows of an append-only table, one primary-key window at a time;
        stop at the first window with nothing old in it."""
        removed, cursor = 0, 0
        while True:
            with self.sessions.begin() as s:
                window = s.execute(
                    select(table.c.id, at)
                    .where(table.c.id > cursor)
                    .order_by(table.c.id)
                    .limit(self.policy.batch)
                ).all()
                if not window:
                    return removed
                cursor = window[-1][0]
                old = [row[0] for row in window if row[1] < cutoff]
                if not old:
                    return removed
                stmt = delete(table).where(table.c.id.in_(old))
                if keep is not None:
                    stmt = stmt.where(~keep)
                removed += _deleted(s, stmt)

    def _rollouts(self, cutoff: float, batch: int) -> int:
        removed = 0
        while True:
            with self.sessions.begin() as s:
                ids = list(
                    s.scalars(select(Rollout.id).where(_rollout_prunable(cutoff)).limit(batch))
                )
                if not ids:
                    return removed
                s.execute(delete(RolloutDevice).where(RolloutDevice.rollout_id.in_(ids)))
                removed += _deleted(s, delete(Rollout).where(Rollout.id.in_(ids)))

    def _revisions(self, cutoff: float, batch: int) -> int:
        removed = 0
        while True:
            with self.sessions.begin() as s:
                ids = list(
                    s.scalars(
                        select(Revision.id)
                        .where(_revision_prunable(s, cutoff))
                        .order_by(Revision.id)
                        .limit(batch)
                    )
                )
                if not ids:
                    return removed
                removed += _deleted(s, delete(Revision).where(Revision.id.in_(ids)))


def _count(s: Session, table: Table, where: ColumnElement[bool]) -> int:
    return int(s.scalar(select(func.count()).select_from(table).where(where)) or 0)


def _deleted(s: Session, stmt: Delete) -> int:
    return int(getattr(s.execute(stmt), "rowcount", 0) or 0)
