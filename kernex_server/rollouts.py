"""Staged rollouts: a change reaches a group's devices in waves, watched for failures.

When a reconcile changes the desired state of devices governed by a rollout policy, the
``RolloutEngine`` records a ``Rollout`` and serves the new state only to the devices of its
admitted waves; the others keep their previous manifest (same serial) until their wave is
admitted. ``evaluate`` looks at the admitted devices' reports: too many failures halt the
rollout (and, with ``auto_rollback``, serve the previous state again under a new serial);
a healthy wave is promoted after the pause, or by ``kernex rollouts promote``. The
decisions are pure functions of the members' reports (``tally``, ``waves_of``); the engine
does the database work, always inside the reconciler's lock (see docs/rollouts.md).

States::

    running --fail--> halted --resume--> running
    running <--pause/resume--> paused
    running --last wave healthy--> completed
    running | paused | halted --abort--> aborted
    running | paused | halted --a newer commit changes its devices--> superseded
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kernex_core.envelope import Envelope
from kernex_core.errors import KernexError
from kernex_core.manifest import Manifest
from kernex_server.manifests import ServedManifest
from kernex_server.models import DeviceManifest, DeviceStatus, Rollout, RolloutDevice

log = logging.getLogger("kernex.server.rollouts")

RUNNING = "running"
PAUSED = "paused"
HALTED = "halted"
COMPLETED = "completed"
ABORTED = "aborted"
SUPERSEDED = "superseded"
STATES = (RUNNING, PAUSED, HALTED, COMPLETED, ABORTED, SUPERSEDED)
ACTIVE = (RUNNING, PAUSED)  # the engine watches these
# These hold their devices: the devices not (or no longer) on the new state stay where they
# are until a newer commit changes them.
HOLDING = (RUNNING, PAUSED, HALTED, ABORTED)
FAILED_PHASES = frozenset({"failed", "rolled_back"})
FLEET_DEFAULT = ""  # the group key of the fleet's default rollout (kernex.yaml)


class RolloutActError(KernexError):
    """An act (pause, resume, promote, abort) that the rollout's state does not allow."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 409) -> None:
        super().__init__(message, hint=hint)
        self.status = status


# Give the manifest's device its next serial with the manifest's content (the reconciler's).
ManifestWriter = Callable[[Session, Manifest, str, DeviceManifest | None, float], ServedManifest]


# -- pure decisions ----------------------------------------------------------------------


def wave_score(group: str, device_id: str) -> str:
    """A device's stable place in a group's rollouts (lowest scores go first)."""
    return hashlib.sha256(f"{group}\x00{device_id}".encode()).hexdigest()


def waves_of(group: str, device_ids: Iterable[str], waves: Sequence[int]) -> dict[str, int]:
    """Wave index of each device: rank the devices by ``wave_score``; wave ``i`` ends at
    ``ceil(n * waves[i] / 100)`` devices (the last wave ends at ``n``), so the first wave
    has at least one device and the same devices are canaries in every release."""
    ranked = sorted(device_ids, key=lambda d: wave_score(group, d))
    n = len(ranked)
    ends = [min(n, math.ceil(n * pct / 100)) for pct in waves[:-1]] + [n]
    out: dict[str, int] = {}
    wave = 0
    for rank, device_id in enumerate(ranked):
        while rank >= ends[wave]:
            wave += 1
        out[device_id] = wave
    return out


def failures_allowed(admitted: int, threshold: int) -> int:
    """Failures tolerated among ``admitted`` devices: the rollout halts when failures pass
    ``threshold`` percent, i.e. exceed ``floor(admitted * threshold / 100)``; with one
    canary and a 10% threshold, its failure halts."""
    return (admitted * threshold) // 100


@dataclass(frozen=True)
class MemberReport:
    device_id: str
    wave: int
    new_serial: int | None  # None: not admitted yet
    reported_serial: int | None
    phase: str | None
    online: bool
    rolled_back: bool = False  # the server served it the previous state again


@dataclass
class WaveTally:
    size: int = 0
    admitted: bool = False
    healthy: int = 0
    failed: int = 0
    pending: int = 0  # admitted, not yet settled on the new serial, online
    offline: int = 0  # admitted, not settled, offline
    rolled_back: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "admitted": self.admitted,
            "healthy": self.healthy,
            "failed": self.failed,
            "pending": self.pending,
            "offline": self.offline,
            "rolled_back": self.rolled_back,
        }


@dataclass
class Tally:
    waves: list[WaveTally] = field(default_factory=list)

    @property
    def admitted(self) -> int:
        return sum(w.size for w in self.waves if w.admitted)

    @property
    def failed(self) -> int:
        return sum(w.failed for w in self.waves)

    @property
    def unsettled(self) -> int:
        return sum(w.pending for w in self.waves)


def tally(members: Iterable[MemberReport], wave_count: int) -> Tally:
    out = Tally([WaveTally() for _ in range(wave_count)])
    for m in members:
        w = out.waves[m.wave]
        w.size += 1
        if m.new_serial is None:
            continue
        w.admitted = True
        on_new = m.new_serial is not None and m.reported_serial == m.new_serial
        if on_new and m.phase in FAILED_PHASES:
            w.failed += 1
        elif m.rolled_back:
            w.rolled_back += 1
        elif on_new and m.phase == "healthy":
            w.healthy += 1
        elif m.online:
            w.pending += 1
        else:
            w.offline += 1
    return out


def wave_ready(t: Tally, wave: int) -> bool:
    """The admitted waves are settled: every online device reported the new serial healthy
    (or failed, within the threshold), and the current wave has a healthy device, so
    offline devices never block forever but a wave never passes without evidence."""
    current = t.waves[wave]
    return t.unsettled == 0 and (current.healthy > 0 or current.size == 0)


# -- the engine --------------------------------------------------------------------------


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


def _rollout_id(row: Rollout) -> str:
    return str(row.id)


def policy_for(fleet: Any, desired: Any) -> tuple[str, Mapping[str, Any]] | None:
    """The governing policy of a device: the rollout of its highest-priority matching
    group that has one, else the fleet's default, else ``None`` (changes apply at once)."""
    groups: Mapping[str, Any] = getattr(fleet, "groups", {}) or {}
    for name in reversed(tuple(getattr(desired, "groups", ()))):
        group = groups.get(name)
        policy = getattr(group, "rollout", None)
        if policy is not None:
            return name, policy.to_dict()
    default = getattr(getattr(fleet, "settings", None), "rollout", None)
    if default is not None:
        return FLEET_DEFAULT, default.to_dict()
    return None


def served_manifest(row: DeviceManifest) -> Manifest:
    return Manifest.from_dict(json.loads(Envelope.from_json(row.envelope.encode()).payload))


class RolloutEngine:
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
        fleet: Any,
        commit: str,
        previous_commit: str | None,
        desired: Mapping[str, Any],
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
            if any(digests.get(m.device_id, m.target_digest) != m.target_digest for m in members):
                superseded.append(row.id)
                if row.state != ABORTED:
                    row.state = SUPERSEDED
                    row.reason = f"superseded by {commit[:12]}"
                row.superseded_by = commit
                row.updated_at = now
                self.events.append(Event("rollout.supersede", row.id, {"by": commit}))
            else:
                held.update(m.device_id for m in members)
        served: list[ServedManifest] = []
        staged: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
        for device_id, (draft, digest) in drafts.items():
            if device_id in held:
                continue  # its rollout still decides when (and whether) it moves
            existing = current.get(device_id)
            found = policy_for(fleet, desired[device_id]) if existing is not None else None
            if found is None:
                served.append(self.write(s, draft, digest, existing, now))
                continue
            group, policy = found
            staged.setdefault(group, (policy, []))[1].append(device_id)
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
                        previous=served_manifest(current[device_id]).to_dict(),
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

    def holds(self, s: Session, device_id: str) -> bool:
        """Whether a rollout decides this device's manifest (``issue_for`` leaves it)."""
        found = s.scalar(
            select(func.count())
            .select_from(RolloutDevice)
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(RolloutDevice.device_id == device_id)
            .where(Rollout.state.in_(HOLDING))
            .where(Rollout.superseded_by.is_(None))
        )
        return bool(found)

    def _holding(self, s: Session) -> list[tuple[Rollout, list[RolloutDevice]]]:
        rows = s.scalars(
            select(Rollout)
            .where(Rollout.state.in_(HOLDING))
            .where(Rollout.superseded_by.is_(None))
            .order_by(Rollout.id)
        ).all()
        return [(row, self._members(s, row.id)) for row in rows]

    @staticmethod
    def _members(s: Session, rollout_id: int) -> list[RolloutDevice]:
        return list(
            s.scalars(
                select(RolloutDevice)
                .where(RolloutDevice.rollout_id == rollout_id)
                .order_by(RolloutDevice.device_id)
            )
        )

    # -- serving -------------------------------------------------------------------------

    def _serve(
        self,
        s: Session,
        row: Rollout,
        member: RolloutDevice,
        content: Mapping[str, Any],
        now: float,
    ) -> ServedManifest:
        base = Manifest.from_dict(dict(content))
        existing = s.get(DeviceManifest, member.device_id)
        manifest = replace(base, serial=0, rollout_id=_rollout_id(row))
        manifest = replace(manifest, issued_at=int(now), expires_at=int(now) + self.ttl())
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
        out = []
        for member in self._members(s, row.id):
            if member.rollback_serial is not None:
                served = self._serve(s, row, member, member.target, now)
                member.new_serial = served.serial
                member.rollback_serial = None
                out.append(served)
        return out

    # -- evaluation ----------------------------------------------------------------------

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
        out = []
        for m in members:
            reported, phase = status.get(m.device_id, (None, None))
            out.append(
                MemberReport(
                    m.device_id,
                    m.wave,
                    m.new_serial,
                    reported,
                    phase,
                    self.online(m.device_id),
                    rolled_back=m.rollback_serial is not None,
                )
            )
        return out

    def tally_of(self, s: Session, row: Rollout) -> Tally:
        return tally(self.reports(s, row), len(row.policy["waves"]))

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
        policy = row.policy
        t = self.tally_of(s, row)
        allowed = failures_allowed(t.admitted, int(policy["failure_threshold"]))
        if t.failed - row.failure_allowance > allowed:
            return self._halt(s, row, t, allowed, now)
        if row.state != RUNNING or not wave_ready(t, row.wave):
            return []
        last = len(policy["waves"]) - 1
        if row.wave >= last:
            row.state = COMPLETED
            row.reason = None
            row.updated_at = now
            self.events.append(Event("rollout.complete", row.id, {"devices": row.devices}))
            return []
        if policy["promotion"] != "auto" or now - row.wave_started_at < float(policy["pause"]):
            return []
        self.events.append(Event("rollout.promote", row.id, {"wave": row.wave + 1, "by": "auto"}))
        return self._admit(s, row, row.wave + 1, now)

    def _halt(
        self, s: Session, row: Rollout, t: Tally, allowed: int, now: float
    ) -> list[ServedManifest]:
        row.state = HALTED
        row.reason = (
            f"{t.failed} of {t.admitted} admitted devices failed "
            f"(threshold {row.policy['failure_threshold']}%: {allowed} allowed)"
        )
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
        _need(row, "pause", (RUNNING,))
        row.state = PAUSED
        return []

    def _resume(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "resume", (PAUSED, HALTED))
        served: list[ServedManifest] = []
        if row.state == HALTED:
            served = self._readmit(s, row, now)
            row.failure_allowance = self.tally_of(s, row).failed  # accepted by the operator
            row.wave_started_at = now
        row.state = RUNNING
        row.reason = None
        return served

    def _promote(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "promote", (RUNNING, PAUSED))
        if row.wave >= len(row.policy["waves"]) - 1:
            raise RolloutActError(
                f"rollout {row.id} has admitted its last wave",
                hint="It completes when that wave reports healthy.",
            )
        row.state = RUNNING
        return self._admit(s, row, row.wave + 1, now)

    def _abort(self, s: Session, row: Rollout, now: float) -> list[ServedManifest]:
        _need(row, "abort", (RUNNING, PAUSED, HALTED))
        row.state = ABORTED
        row.reason = "aborted by an operator"
        return self._roll_back(s, row, now)

    # -- reading -------------------------------------------------------------------------

    def counts(self, s: Session) -> dict[str, int]:
        rows = s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
        found = {state: int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in STATES}

    def describe(self, s: Session, row: Rollout, *, devices: bool = False) -> dict[str, Any]:
        reports = self.reports(s, row)
        t = tally(reports, len(row.policy["waves"]))
        out: dict[str, Any] = {
            "id": row.id,
            "group": row.group or None,
            "revision": row.revision,
            "previous_revision": row.previous_revision,
            "state": row.state,
            "policy": dict(row.policy),
            "wave": row.wave,
            "waves": [
                {"index": i, "percent": pct, **w.to_dict()}
                for i, (pct, w) in enumerate(zip(row.policy["waves"], t.waves, strict=True))
            ],
            "devices": row.devices,
            "failed": t.failed,
            "failures_allowed": failures_allowed(t.admitted, int(row.policy["failure_threshold"])),
            "failure_allowance": row.failure_allowance,
            "awaiting_promotion": row.state == RUNNING
            and row.policy["promotion"] == "manual"
            and row.wave < len(row.policy["waves"]) - 1
            and wave_ready(t, row.wave),
            "reason": row.reason,
            "superseded_by": row.superseded_by,
            "wave_started_at": row.wave_started_at,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
        if devices:
            out["device_list"] = [
                {
                    "id": r.device_id,
                    "wave": r.wave,
                    "admitted": r.new_serial is not None,
                    "new_serial": r.new_serial,
                    "reported_serial": r.reported_serial,
                    "phase": r.phase,
                    "online": r.online,
                    "rolled_back": r.rolled_back,
                }
                for r in reports
            ]
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
            .where(Rollout.state.in_(HOLDING))
            .where(Rollout.superseded_by.is_(None))
        ).all()
        return {device_id: (rid, wave) for device_id, rid, wave in rows}


_PAST = {"pause": "paused", "resume": "resumed", "promote": "promoted", "abort": "aborted"}


def _need(row: Rollout, verb: str, allowed: tuple[str, ...]) -> None:
    if row.state not in allowed:
        raise RolloutActError(
            f"rollout {row.id} is {row.state}; only a {' or '.join(allowed)} rollout can "
            f"be {_PAST[verb]}",
            hint="A newer commit to the group starts a new rollout.",
        )


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class RolloutMetrics:
    """``kernex_rollouts{state}`` (refreshed by every evaluation) and a halt counter."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_state = Gauge("kernex_rollouts", "Rollouts by state.", ["state"], registry=registry)
        self.halts = Counter(
            "kernex_rollout_halts", "Rollouts halted by failures.", registry=registry
        )
        for state in STATES:
            self.by_state.labels(state=state).set(0)

    def observe(self, counts: Mapping[str, int], halts: int) -> None:
        for state, n in counts.items():
            self.by_state.labels(state=state).set(n)
        if halts:
            self.halts.inc(halts)
