"""Staged rollouts, the database engine: a change reaches a group's devices in waves.

When a reconcile changes the desired state of devices governed by a rollout policy, the
``RolloutEngine`` records a ``Rollout`` and serves the new state only to the devices of its
admitted waves; the others keep their previous manifest (same serial) until their wave is
admitted. ``evaluate`` looks at the admitted devices' reports: too many failures halt the
rollout (and, with ``auto_rollback``, serve the previous state again under a new serial);
a healthy wave is promoted after the pause, or by ``kernex rollouts promote``. The
decisions and the state machine are pure, in ``kernex_core.rollout``; the engine does the
database work, always inside the reconciler's lock (see docs/rollouts.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kernex_core.errors import KernexError
from kernex_core.fleet.model import DesiredState
from kernex_core.fleet.resolve import Fleet
from kernex_core.manifest import Manifest
from kernex_core.rollout import (
    ABORTED,
    ACTIVE,
    COMPLETE,
    COMPLETED,
    HALT,
    HALTED,
    PAUSED,
    PROMOTE,
    RUNNING,
    STOPPED,
    SUPERSEDED,
    Tally,
    act_refusal,
    by_policy,
    ends_hold,
    freeze,
    halt_reason,
    is_last_wave,
    next_step,
    released,
    waves_of,
)
from kernex_server.manifests import ServedManifest, stored_manifest
from kernex_server.models import DeviceManifest, Rollout, RolloutDevice
from kernex_server.rollout_reads import _HOLDS, RolloutReads

log = logging.getLogger("kernex.server.rollouts")


class RolloutActError(KernexError):
    """An act (pause, resume, promote, abort) that the rollout's state does not allow."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 409) -> None:
        super().__init__(message, hint=hint)
        self.status = status


# Give the manifest's device its next serial with the manifest's content (the reconciler's).
ManifestWriter = Callable[[Session, Manifest, str, DeviceManifest | None, float], ServedManifest]


@dataclass(frozen=True)
class Staged:
    """What a reconcile pass should do about the devices whose desired state changed."""

    served: list[ServedManifest]
    started: list[int]  # rollouts created
    superseded: list[int]


@dataclass
class Event:
    """A transition the caller audits: ``rollout.start``, ``.halt``, ``.promote`` ..."""

    action: str
    rollout_id: int
    detail: dict[str, Any]


class RolloutEngine(RolloutReads):
    def __init__(
        self,
        write: ManifestWriter,
        *,
        ttl: Callable[[], int],
        online: Callable[[str], bool],
    ) -> None:
        self.write = write
        self.ttl = ttl
        self.online = online
        self.watched: dict[str, int] = {}  # device -> active rollout (cheap report check)
        self.events: list[Event] = []  # transitions since the caller last took them
        self.halts = 0  # halts since start (the metrics counter reads the delta)

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    # -- reconcile -----------------------------------------------------------------------

    def stage(
        self,
        s: Session,
        *,
        fleet: Fleet,
        commit: str,
        previous_commit: str | None,
        desired: Mapping[str, DesiredState],
        drafts: Mapping[str, tuple[Manifest, str]],
        digests: Mapping[str, str],
        current: Mapping[str, DeviceManifest],
        now: float,
    ) -> Staged:
        """Supersede the rollouts this commit changes, then issue the changed devices:
        at once when no rollout governs them, else through a new rollout per group."""
        superseded: list[int] = []
        held: set[str] = set()
        for row, members in self._holding(s):
            moved = [
                m for m in members if digests.get(m.device_id, m.target_digest) != m.target_digest
            ]
            if moved and not (row.state in STOPPED and not self._ends_hold(moved, desired)):
                superseded.append(row.id)
                row.final = freeze(self.tally_of(s, row))
                if row.state != ABORTED:
                    row.state = SUPERSEDED
                    row.reason = f"superseded by {commit[:12]}"
                row.superseded_by = commit
                row.updated_at = now
                self.events.append(Event("rollout.supersede", row.id, {"by": commit}))
                continue
            held.update(m.device_id for m in members)
            if moved:  # stopped, its versions unchanged: it keeps holding, on newer content
                for m in moved:
                    if m.device_id in drafts:
                        m.target = drafts[m.device_id][0].to_dict()
                        m.target_digest = drafts[m.device_id][1]
                row.updated_at = now
                detail = {"commit": commit, "devices": len(moved)}
                self.events.append(Event("rollout.hold", row.id, detail))
                log.warning(
                    "rollout %s is %s: %s leaves its devices where they are",
                    row.id,
                    row.state,
                    commit[:12],
                )
        # A held device's rollout still decides when (and whether) it moves; a device
        # without a manifest yet has nothing to stage from.
        free = [d for d in drafts if d not in held]
        at_once, staged = by_policy(fleet, desired, [d for d in free if d in current])
        now_ids = set(at_once).union(d for d in free if d not in current)
        served = [self.write(s, *drafts[d], current.get(d), now) for d in free if d in now_ids]
        started = []
        for group, (policy, device_ids) in sorted(staged.items()):
            row = Rollout(
                group=group,
                revision=commit,
                previous_revision=previous_commit,
                policy=dict(policy),
                state=RUNNING,
                wave=0,
                wave_started_at=now,
                devices=len(device_ids),
                failure_allowance=0,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            started.append(row.id)
            assigned = waves_of(group, device_ids, policy["waves"])
            for device_id in device_ids:
                draft, digest = drafts[device_id]
                s.add(
                    RolloutDevice(
                        rollout_id=row.id,
                        device_id=device_id,
                        wave=assigned[device_id],
                        target_digest=digest,
                        target=draft.to_dict(),
                        previous=stored_manifest(current[device_id].envelope).to_dict(),
                    )
                )
            s.flush()
            served.extend(self._admit(s, row, 0, now))
            self.events.append(
                Event(
                    "rollout.start",
                    row.id,
                    {"group": group, "revision": commit, "devices": len(device_ids)},
                )
            )
        return Staged(served, started, superseded)

    @staticmethod
    def _ends_hold(moved: list[RolloutDevice], desired: Mapping[str, DesiredState]) -> bool:
        return any(
            ends_hold(released(m.target, m.previous), desired.get(m.device_id)) for m in moved
        )

    def holds(self, s: Session, device_id: str) -> bool:
        """Whether a rollout decides this device's manifest (``issue_for`` leaves it)."""
        found = s.scalar(
            select(func.count())
            .select_from(RolloutDevice)
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(RolloutDevice.device_id == device_id)
            .where(*_HOLDS)
        )
        return bool(found)

    def _holding(self, s: Session) -> list[tuple[Rollout, list[RolloutDevice]]]:
        rows = s.scalars(select(Rollout).where(*_HOLDS).order_by(Rollout.id)).all()
        return [(row, self._members(s, row.id)) for row in rows]

    # -- serving -------------------------------------------------------------------------

    def _serve(
        self,
        s: Session,
        row: Rollout,
        member: RolloutDevice,
        content: Mapping[str, Any],
        now: float,
    ) -> ServedManifest:
        manifest = replace(
            Manifest.from_dict(dict(content)),
            serial=0,
            rollout_id=str(row.id),
            issued_at=int(now),
            expires_at=int(now) + self.ttl(),
        )
        existing = s.get(DeviceManifest, member.device_id)
        return self.write(s, manifest, manifest.desired_digest(), existing, now)

    def _admit(self, s: Session, row: Rollout, wave: int, now: float) -> list[ServedManifest]:
        out = []
        for member in self._members(s, row.id):
            if member.wave == wave and member.new_serial is None:
                served = self._serve(s, row, member, member.target, now)
                member.new_serial = served.serial
                out.append(served)
        row.wave = wave
        row.wave_started_at = now
        row.updated_at = now
        return out

    def _roll_back(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        """Serve the previous state again, under a new serial, to devices that took the new."""
        out = []
        for member in self._members(s, row.id):
            if member.new_serial is not None and member.rollback_serial is None:
                served = self._serve(s, row, member, member.previous, now)
                member.rollback_serial = served.serial
                out.append(served)
        return out

    def _readmit(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        """Serve the target to admitted members not on it (rolled back, or held on)."""
        out = []
        for member in self._members(s, row.id):
            on = s.get(DeviceManifest, member.device_id)
            behind = on is not None and on.desired_digest != member.target_digest
            if member.new_serial is not None and (member.rollback_serial is not None or behind):
                served = self._serve(s, row, member, member.target, now)
                member.new_serial = served.serial
                member.rollback_serial = None
                out.append(served)
        return out

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, s: Session, now: float) -> list[ServedManifest]:
        """Halt, promote or complete every running or paused rollout as its reports say."""
        out: list[ServedManifest] = []
        watched: dict[str, int] = {}
        rows = s.scalars(select(Rollout).where(Rollout.state.in_(ACTIVE)).order_by(Rollout.id))
        for row in rows.all():
            out.extend(self._evaluate(s, row, now))
            if row.state in ACTIVE:
                watched.update((m.device_id, row.id) for m in self._members(s, row.id))
        self.watched = watched
        return out

    def _evaluate(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        t = self.tally_of(s, row)
        step = next_step(
            t,
            state=row.state,
            wave=row.wave,
            policy=row.policy,
            failure_allowance=row.failure_allowance,
            wave_started_at=row.wave_started_at,
            now=now,
        )
        if step == HALT:
            return self._halt(s, row, t, now)
        if step == COMPLETE:
            row.state = COMPLETED
            row.final = freeze(t)
            row.reason = None
            row.updated_at = now
            self.events.append(Event("rollout.complete", row.id, {"devices": row.devices}))
        elif step == PROMOTE:
            self.events.append(
                Event("rollout.promote", row.id, {"wave": row.wave + 1, "by": "auto"})
            )
            return self._admit(s, row, row.wave + 1, now)
        return []

    def _halt(self, s: Session, row: Rollout, t: Tally, now: float) -> list[ServedManifest]:
        row.state = HALTED
        row.reason = halt_reason(t, row.policy)
        row.updated_at = now
        self.halts += 1
        served = self._roll_back(s, row, now) if row.policy.get("auto_rollback") else []
        self.events.append(
            Event(
                "rollout.halt",
                row.id,
                {"reason": row.reason, "rolled_back": [m.device_id for m in served]},
            )
        )
        log.warning("rollout %s halted: %s", row.id, row.reason)
        return served

    # -- operator acts ---------------------------------------------------------------------

    def act(self, s: Session, rollout_id: int, verb: str, now: float) -> list[ServedManifest]:
        row = s.get(Rollout, rollout_id)
        if row is None:
            raise RolloutActError(f"no rollout {rollout_id}", status=404)
        handler = {
            "pause": self._pause,
            "resume": self._resume,
            "promote": self._promote,
            "abort": self._abort,
        }[verb]
        served = handler(s, row, now)
        row.updated_at = now
        return served

    def _pause(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "pause")
        row.state = PAUSED
        return []

    def _resume(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "resume")
        served: list[ServedManifest] = []
        if row.state == HALTED:
            served = self._readmit(s, row, now)
            row.failure_allowance = self.tally_of(s, row).failed  # accepted by the operator
            row.wave_started_at = now
        row.state = RUNNING
        row.reason = None
        return served

    def _promote(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "promote")
        if is_last_wave(row.policy, row.wave):
            raise RolloutActError(
                f"rollout {row.id} has admitted its last wave",
                hint="It completes when that wave reports healthy.",
            )
        row.state = RUNNING
        return self._admit(s, row, row.wave + 1, now)

    def _abort(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "abort")
        row.state = ABORTED
        row.reason = "aborted by an operator"
        return self._roll_back(s, row, now)


def _need(row: Rollout, verb: str) -> None:
    refusal = act_refusal(row.id, row.state, verb)
    if refusal is not None:
        raise RolloutActError(refusal, hint="A newer commit to the group starts a new rollout.")
