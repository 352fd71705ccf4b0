"""Staged rollouts, the arithmetic: which policy governs a device, which wave it is in, how
many failures a rollout tolerates, how its members' reports tally and what it does next.

Pure functions of plain values; the server's ``RolloutEngine`` keeps the rollouts in the
database and applies these decisions (docs/rollouts.md).

States::

    running --fail--> halted --resume--> running
    running <--pause/resume--> paused
    running --last wave healthy--> completed
    running | paused | halted --abort--> aborted
    running | paused --a newer commit changes its devices--> superseded
    halted | aborted --a newer commit changes the version of a bundle it released--> superseded

A halted or aborted rollout holds its devices through newer commits that leave its
bundle versions as they are (``ends_hold``): an unrelated config commit does not release
a bad version to the group again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from kernex_core.fleet.model import DesiredState
from kernex_core.fleet.resolve import Fleet

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
STOPPED = (HALTED, ABORTED)  # a newer commit supersedes these only by changing the release
FAILED_PHASES = frozenset({"failed", "rolled_back"})
FLEET_DEFAULT = ""  # the group key of the fleet's default rollout (kernex.yaml)

# What an evaluation decides (``next_step``).
HALT = "halt"
COMPLETE = "complete"
PROMOTE = "promote"

# The operator's acts and the states each is allowed from.
ACTS: Mapping[str, tuple[str, ...]] = {
    "pause": (RUNNING,),
    "resume": (PAUSED, HALTED),
    "promote": (RUNNING, PAUSED),
    "abort": (RUNNING, PAUSED, HALTED),
}
_PAST = {"pause": "paused", "resume": "resumed", "promote": "promoted", "abort": "aborted"}


def policy_for(fleet: Fleet, desired: DesiredState) -> tuple[str, Mapping[str, Any]] | None:
    """The governing policy of a device: the rollout of its highest-priority matching
    group that has one, else the fleet's default, else ``None`` (changes apply at once)."""
    for name in reversed(desired.groups):
        group = fleet.groups.get(name)
        if group is not None and group.rollout is not None:
            return name, group.rollout.to_dict()
    default = fleet.settings.rollout
    if default is not None:
        return FLEET_DEFAULT, default.to_dict()
    return None


def by_policy(
    fleet: Fleet, desired: Mapping[str, DesiredState], device_ids: Iterable[str]
) -> tuple[list[str], dict[str, tuple[Mapping[str, Any], list[str]]]]:
    """Changed devices split into those that move at once (no policy governs them) and,
    per governing group, the policy and the devices a new rollout stages."""
    at_once: list[str] = []
    staged: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
    for device_id in device_ids:
        found = policy_for(fleet, desired[device_id])
        if found is None:
            at_once.append(device_id)
        else:
            staged.setdefault(found[0], (found[1], []))[1].append(device_id)
    return at_once, staged


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "wave": self.wave,
            "admitted": self.new_serial is not None,
            "new_serial": self.new_serial,
            "reported_serial": self.reported_serial,
            "phase": self.phase,
            "online": self.online,
            "rolled_back": self.rolled_back,
        }


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
        on_new = m.reported_serial == m.new_serial
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


def freeze(t: Tally) -> dict[str, Any]:
    """The counts a rollout ended with, to keep (``Rollout.final``)."""
    return {"waves": [w.to_dict() for w in t.waves]}


def thaw(final: Mapping[str, Any]) -> Tally:
    names = [f.name for f in fields(WaveTally)]
    return Tally([WaveTally(**{n: w[n] for n in names}) for w in final["waves"]])


def released(target: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, str | None]:
    """The bundle versions a member's new state brings (name -> version; None: removed),
    from two ``Manifest.to_dict()`` forms."""
    new = {b["name"]: b["version"] for b in target.get("bundles", [])}
    old = {b["name"]: b["version"] for b in previous.get("bundles", [])}
    out: dict[str, str | None] = {n: v for n, v in new.items() if old.get(n) != v}
    out.update({n: None for n in old if n not in new})
    return out


def ends_hold(release: Mapping[str, str | None], desired: DesiredState | None) -> bool:
    """Whether a newer desired state of a stopped rollout's member changes a version the
    rollout released (a config-only release ends with any change)."""
    if desired is None:
        return False
    if not release:
        return True
    versions = {name: b.version for name, b in desired.bundles.items()}
    return any(versions.get(name) != version for name, version in release.items())


def wave_ready(t: Tally, wave: int) -> bool:
    """The admitted waves are settled: every online device reported the new serial healthy
    (or failed, within the threshold), and the current wave has a healthy device, so
    offline devices never block forever but a wave never passes without evidence."""
    current = t.waves[wave]
    return t.unsettled == 0 and (current.healthy > 0 or current.size == 0)


def is_last_wave(policy: Mapping[str, Any], wave: int) -> bool:
    return wave >= len(policy["waves"]) - 1


def over_threshold(t: Tally, policy: Mapping[str, Any], failure_allowance: int) -> bool:
    """More failures than the threshold allows, not counting those an operator accepted
    when resuming a halted rollout (``failure_allowance``)."""
    allowed = failures_allowed(t.admitted, int(policy["failure_threshold"]))
    return t.failed - failure_allowance > allowed


def halt_reason(t: Tally, policy: Mapping[str, Any]) -> str:
    threshold = int(policy["failure_threshold"])
    allowed = failures_allowed(t.admitted, threshold)
    return (
        f"{t.failed} of {t.admitted} admitted devices failed "
        f"(threshold {threshold}%: {allowed} allowed)"
    )


def next_step(
    t: Tally,
    *,
    state: str,
    wave: int,
    policy: Mapping[str, Any],
    failure_allowance: int,
    wave_started_at: float,
    now: float,
) -> str | None:
    """What an active rollout does now: ``HALT``, ``COMPLETE``, ``PROMOTE`` or nothing."""
    if over_threshold(t, policy, failure_allowance):
        return HALT
    if state != RUNNING or not wave_ready(t, wave):
        return None
    if is_last_wave(policy, wave):
        return COMPLETE
    if policy["promotion"] != "auto" or now - wave_started_at < float(policy["pause"]):
        return None
    return PROMOTE


def awaiting_promotion(t: Tally, *, state: str, wave: int, policy: Mapping[str, Any]) -> bool:
    """A manual rollout whose current wave is healthy and has a wave left to admit."""
    return (
        state == RUNNING
        and policy["promotion"] == "manual"
        and not is_last_wave(policy, wave)
        and wave_ready(t, wave)
    )


def progress(t: Tally, *, state: str, wave: int, policy: Mapping[str, Any]) -> dict[str, Any]:
    """A rollout's waves, failures and whether it awaits an operator, for the API."""
    return {
        "waves": [
            {"index": i, "percent": pct, **w.to_dict()}
            for i, (pct, w) in enumerate(zip(policy["waves"], t.waves, strict=True))
        ],
        "failed": t.failed,
        "failures_allowed": failures_allowed(t.admitted, int(policy["failure_threshold"])),
        "awaiting_promotion": awaiting_promotion(t, state=state, wave=wave, policy=policy),
    }


def act_refusal(rollout_id: int, state: str, verb: str) -> str | None:
    """Why an operator act (pause, resume, promote, abort) is not allowed now, or None."""
    allowed = ACTS[verb]
    if state in allowed:
        return None
    return (
        f"rollout {rollout_id} is {state}; only a {' or '.join(allowed)} rollout can "
        f"be {_PAST[verb]}"
    )
