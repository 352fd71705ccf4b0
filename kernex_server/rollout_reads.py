"""Staged rollouts, the reading side: members, their reports and tallies, and the views
the admin API shows (``RolloutEngine`` is built on it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kernex_core.rollout import HOLDING, STATES, MemberReport, Tally, progress, tally, thaw
from kernex_server.models import DeviceStatus, Rollout, RolloutDevice

_HOLDS = (  # the rollouts that hold their devices now
    Rollout.state.in_(HOLDING),
    Rollout.superseded_by.is_(None),
)


class RolloutReads:
    online: Callable[[str], bool]

    @staticmethod
    def _members(s: Session, rollout_id: int) -> list[RolloutDevice]:
        return list(
            s.scalars(
                select(RolloutDevice)
                .where(RolloutDevice.rollout_id == rollout_id)
                .order_by(RolloutDevice.device_id)
            )
        )

    def reports(self, s: Session, row: Rollout) -> list[MemberReport]:
        members = self._members(s, row.id)
        ids = [m.device_id for m in members]
        status: dict[str, tuple[int | None, str | None]] = {}
        for chunk in _chunks(ids, 500):
            for device_id, serial, reported_phase in s.execute(
                select(DeviceStatus.device_id, DeviceStatus.serial, DeviceStatus.phase).where(
                    DeviceStatus.device_id.in_(chunk)
                )
            ):
                status[device_id] = (serial, reported_phase)
        return [
            MemberReport(
                m.device_id,
                m.wave,
                m.new_serial,
                *status.get(m.device_id, (None, None)),
                online=self.online(m.device_id),
                rolled_back=m.rollback_serial is not None,
            )
            for m in members
        ]

    def tally_of(self, s: Session, row: Rollout) -> Tally:
        return tally(self.reports(s, row), len(row.policy["waves"]))

    def counts(self, s: Session) -> dict[str, int]:
        rows = s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
        found = {state: int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in STATES}

    def describe(self, s: Session, row: Rollout, *, devices: bool = False) -> dict[str, Any]:
        reports = self.reports(s, row)
        t = thaw(row.final) if row.final else tally(reports, len(row.policy["waves"]))
        out: dict[str, Any] = {
            "id": row.id,
            "group": row.group or None,
            "revision": row.revision,
            "previous_revision": row.previous_revision,
            "state": row.state,
            "policy": dict(row.policy),
            "wave": row.wave,
            **progress(t, state=row.state, wave=row.wave, policy=row.policy),
            "devices": row.devices,
            "failure_allowance": row.failure_allowance,
            "reason": row.reason,
            "superseded_by": row.superseded_by,
            "wave_started_at": row.wave_started_at,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
        if devices:
            out["device_list"] = [r.to_dict() for r in reports]
        return out

    def list(self, s: Session, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(Rollout).order_by(Rollout.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(Rollout.state == state)
        return [self.describe(s, row) for row in s.scalars(stmt).all()]

    def membership(self, s: Session) -> dict[str, tuple[int, int]]:
        """Device -> (rollout id, wave) of the rollouts that hold devices now."""
        rows = s.execute(
            select(RolloutDevice.device_id, RolloutDevice.rollout_id, RolloutDevice.wave)
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(*_HOLDS)
        ).all()
        return {device_id: (rid, wave) for device_id, rid, wave in rows}


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
