"""Plans: what changes for each device between two resolved revisions.

A plan lists, per device, bundles added, upgraded, downgraded, replaced (same version,
other bytes) or removed, config leaves added, changed or removed (dotted paths), and the
groups the device joined or left. Downgrades, removals and replacements are flagged,
because they are the changes a reviewer must not miss.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernex_core.fleet.model import DesiredState

ADDED, UPGRADED, DOWNGRADED, REPLACED, REMOVED, CHANGED = (
    "added",
    "upgraded",
    "downgraded",
    "replaced",
    "removed",
    "changed",
)
WARN_KINDS = frozenset({DOWNGRADED, REPLACED, REMOVED})

_VERSION_RE = re.compile(r"^[vV]?(\d+(?:\.\d+)*)(.*)$")
_PART_RE = re.compile(r"\d+|[A-Za-z]+")


def _version_key(version: str) -> tuple[Any, ...] | None:
    match = _VERSION_RE.match(version)
    if match is None:
        return None
    numbers = [int(n) for n in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    rest = match.group(2)
    if rest.startswith("+"):  # build metadata does not order versions
        rest = ""
    suffix = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in _PART_RE.findall(rest)
    )
    post = rest.lstrip(".-_").lower().startswith("post")
    # A release sorts after its pre-releases (1.0rc1 < 1.0) and before post-releases.
    rank = 2 if post else (1 if not rest else 0)
    return (tuple(numbers), rank, suffix)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1: numeric segments compare as numbers (1.10 > 1.9), pre-releases sort
    before their release (1.4.0-rc1 < 1.4.0); versions without a leading number compare
    as text."""
    ka, kb = _version_key(a), _version_key(b)
    if ka is None or kb is None:
        return (a > b) - (a < b)
    if ka == kb:
        return 0
    return 1 if ka > kb else -1


@dataclass(frozen=True)
class BundleChange:
    name: str
    kind: str  # added, upgraded, downgraded, replaced, removed
    old: str | None
    new: str | None

    @property
    def warning(self) -> bool:
        return self.kind in WARN_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "old": self.old,
            "new": self.new,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class ConfigChange:
    path: str  # dotted: app.log.level
    kind: str  # added, changed, removed
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    status: str  # added (new to the fleet), removed (gone from it), changed
    bundles: tuple[BundleChange, ...] = ()
    config: tuple[ConfigChange, ...] = ()
    groups_joined: tuple[str, ...] = ()
    groups_left: tuple[str, ...] = ()

    @property
    def warning(self) -> bool:
        return self.status == REMOVED or any(b.warning for b in self.bundles)

    @property
    def state_changes(self) -> bool:
        """True when the device must act (bundles or config), not just regroup."""
        return bool(self.bundles or self.config) or self.status != CHANGED

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": self.status,
            "bundles": [b.to_dict() for b in self.bundles],
            "config": [c.to_dict() for c in self.config],
            "groups_joined": list(self.groups_joined),
            "groups_left": list(self.groups_left),
            "warning": self.warning,
        }


@dataclass(frozen=True)
class Plan:
    devices: tuple[DevicePlan, ...]  # only devices with a change, by id
    unchanged: int  # devices present in both revisions with nothing to do

    @property
    def has_changes(self) -> bool:
        return bool(self.devices)

    def summary(self) -> dict[str, int]:
        counts = {
            "devices_changed": 0,
            "devices_added": 0,
            "devices_removed": 0,
            "devices_unchanged": self.unchanged,
            "bundles_added": 0,
            "bundles_upgraded": 0,
            "bundles_downgraded": 0,
            "bundles_replaced": 0,
            "bundles_removed": 0,
            "config_changes": 0,
            "group_moves": 0,
        }
        for device in self.devices:
            counts[f"devices_{device.status}"] += 1
            for bundle in device.bundles:
                counts[f"bundles_{bundle.kind}"] += 1
            counts["config_changes"] += len(device.config)
            counts["group_moves"] += len(device.groups_joined) + len(device.groups_left)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "has_changes": self.has_changes,
            "summary": self.summary(),
            "devices": [d.to_dict() for d in self.devices],
        }


_EMPTY = DesiredState(bundles={}, config={}, groups=())


def compute_plan(base: Mapping[str, DesiredState], head: Mapping[str, DesiredState]) -> Plan:
    """Compare the resolved states of two revisions, device by device."""
    plans: list[DevicePlan] = []
    unchanged = 0
    memo: dict[tuple[int, int], DevicePlan | None] = {}
    for device_id in sorted(set(base) | set(head)):
        old, new = base.get(device_id), head.get(device_id)
        if old is not None and new is not None:
            # Devices of one label set share state objects: diff each pair once.
            key = (id(old), id(new))
            if key not in memo:
                memo[key] = _diff("", CHANGED, old, new)
            template = memo[key]
            if template is None:
                unchanged += 1
            else:
                plans.append(_renamed(template, device_id))
        elif new is not None:
            plans.append(_diff(device_id, ADDED, _EMPTY, new) or DevicePlan(device_id, ADDED))
        elif old is not None:
            plans.append(_diff(device_id, REMOVED, old, _EMPTY) or DevicePlan(device_id, REMOVED))
    return Plan(tuple(plans), unchanged)


def _renamed(template: DevicePlan, device_id: str) -> DevicePlan:
    return DevicePlan(
        device_id,
        template.status,
        template.bundles,
        template.config,
        template.groups_joined,
        template.groups_left,
    )


def _diff(device_id: str, status: str, old: DesiredState, new: DesiredState) -> DevicePlan | None:
    if old is new or (
        old.groups == new.groups
        and old.bundles == new.bundles
        and _strictly_equal(old.config, new.config)
    ):
        return None
    bundles = tuple(_bundle_changes(old, new))
    config = tuple(_config_changes(old.config, new.config, ""))
    joined = tuple(g for g in new.groups if g not in old.groups)
    left = tuple(g for g in old.groups if g not in new.groups)
    if not (bundles or config or joined or left) and status == CHANGED:
        return None  # only the order of groups changed
    return DevicePlan(device_id, status, bundles, config, joined, left)


def _strictly_equal(a: Any, b: Any) -> bool:
    """Equal and of the same types throughout: ``1 == True`` in Python, not on the wire."""
    if type(a) is not type(b) and not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return False
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(_strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_strictly_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _bundle_changes(old: DesiredState, new: DesiredState) -> list[BundleChange]:
    changes: list[BundleChange] = []
    for name in sorted(set(old.bundles) | set(new.bundles)):
        before, after = old.bundles.get(name), new.bundles.get(name)
        if before == after:
            continue
        if before is None and after is not None:
            changes.append(BundleChange(name, ADDED, None, after.version))
        elif after is None and before is not None:
            changes.append(BundleChange(name, REMOVED, before.version, None))
        elif before is not None and after is not None:
            order = compare_versions(after.version, before.version)
            if order > 0:
                kind = UPGRADED
            elif order < 0:
                kind = DOWNGRADED
            elif before.sha256 != after.sha256 or before.size != after.size:
                kind = REPLACED
            else:
                continue  # same bytes; only signatures or url changed
            changes.append(BundleChange(name, kind, before.version, after.version))
    return changes


def _config_changes(old: Any, new: Any, prefix: str) -> list[ConfigChange]:
    changes: list[ConfigChange] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else str(key)
        missing = key not in old, key not in new
        before, after = old.get(key), new.get(key)
        if missing[0]:
            changes.extend(_leaves(after, path, ADDED))
        elif missing[1]:
            changes.extend(_leaves(before, path, REMOVED))
        elif isinstance(before, Mapping) and isinstance(after, Mapping):
            changes.extend(_config_changes(before, after, path))
        elif not _strictly_equal(before, after):
            changes.append(ConfigChange(path, CHANGED, before, after))
    return changes


def _leaves(value: Any, path: str, kind: str) -> list[ConfigChange]:
    if isinstance(value, Mapping) and value:
        out: list[ConfigChange] = []
        for key in sorted(value):
            out.extend(_leaves(value[key], f"{path}.{key}", kind))
        return out
    if kind == ADDED:
        return [ConfigChange(path, kind, None, value)]
    return [ConfigChange(path, kind, value, None)]
