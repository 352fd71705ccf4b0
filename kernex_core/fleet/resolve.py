"""Resolution: from the fleet's layers to one device's desired state.

Layers apply in this order: the fleet's defaults, then every group whose selector matches
the device's labels in ascending priority (ties by group name), then the device's own file.
Mappings merge as in JSON Merge Patch (RFC 7386): a mapping merges key by key, any other
value replaces, and ``null`` removes the key; ``bundles`` works the same way, so a group
drops a bundle with ``name: null``. Two matching groups of the same priority that set the
same bundle or config leaf (or one a leaf inside the other's) are ambiguous: a conflict.

Real fleets have far fewer distinct label sets than devices, so the layered state for a
label set is computed once and shared, and groups are indexed by the label pairs their
selectors require, so a device is only tested against the groups that could match it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kernex_core.errors import FleetConflictError, KernexError, ValidationIssue
from kernex_core.fleet.model import BundleVersion, DesiredState, DeviceSpec, FleetSettings, Group

KeyPath = tuple[str, ...]


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Merge Patch: a new mapping; ``target`` and ``patch`` are left as they were."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif type(value) is dict or isinstance(value, Mapping):
            current = result.get(key)
            if type(current) is not dict and not isinstance(current, Mapping):
                current = {}
            result[key] = merge_patch(current, value)
        else:
            result[key] = value
    return result


@dataclass(frozen=True)
class Conflict:
    """Two matching groups of equal priority that both set ``key``."""

    first: Group
    second: Group
    key: KeyPath  # ("bundles", name) or ("config", *path)

    def describe(self, devices: Sequence[str]) -> str:
        shown = ", ".join(f"'{d}'" for d in devices[:3])
        more = f" and {len(devices) - 3} more" if len(devices) > 3 else ""
        return (
            f"groups '{self.first.name}' and '{self.second.name}' both have priority "
            f"{self.first.priority} and both set {'.'.join(self.key)} "
            f"for device{'s' if len(devices) > 1 else ''} {shown}{more}"
        )


CONFLICT_HINT = (
    "Give one group a higher priority (it applies later and wins), "
    "or narrow a selector so the groups do not both match."
)


class _Footprint:
    """The keys a group sets, for conflict checks."""

    def __init__(self, group: Group) -> None:
        leaves: set[KeyPath] = {("bundles", name) for name in group.bundles}
        leaves.update(("config", *path) for path in _leaf_paths(group.config))
        self.leaves = frozenset(leaves)
        self.prefixes = frozenset(leaf[:i] for leaf in leaves for i in range(2, len(leaf)))

    def overlap(self, other: _Footprint) -> list[KeyPath]:
        shared = (
            (self.leaves & other.leaves)
            | (self.leaves & other.prefixes)
            | (other.leaves & self.prefixes)
        )
        return sorted(shared)


def _leaf_paths(config: Mapping[str, Any], prefix: KeyPath = ()) -> Iterable[KeyPath]:
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            yield from _leaf_paths(value, (*prefix, key))
        elif not isinstance(value, Mapping):
            yield (*prefix, key)


class GroupIndex:
    """Groups in application order, indexed by the label pairs their selectors require."""

    def __init__(self, groups: Iterable[Group]) -> None:
        self.ordered = sorted(groups, key=lambda g: (g.priority, g.name))
        self.footprints = {g.name: _Footprint(g) for g in self.ordered}
        # Pairs of equal-priority groups whose keys overlap: only these can ever conflict.
        self.risky: set[tuple[str, str]] = set()
        for i, first in enumerate(self.ordered):
            for second in self.ordered[i + 1 :]:
                if second.priority != first.priority:
                    break
                if self.footprints[first.name].overlap(self.footprints[second.name]):
                    self.risky.add((first.name, second.name))
        self._by_pair: dict[tuple[str, str], list[int]] = {}
        self._always: list[int] = []
        for position, group in enumerate(self.ordered):
            pairs = group.selector.required_pairs()
            if pairs is None:
                self._always.append(position)
            else:
                for pair in pairs:
                    self._by_pair.setdefault(pair, []).append(position)

    def match(self, labels: Mapping[str, str]) -> tuple[Group, ...]:
        candidates = set(self._always)
        for pair in labels.items():
            found = self._by_pair.get(pair)
            if found:
                candidates.update(found)
        ordered = self.ordered
        return tuple(ordered[i] for i in sorted(candidates) if ordered[i].selector.matches(labels))

    def conflicts(self, groups: Sequence[Group]) -> list[Conflict]:
        """Conflicts among ``groups`` (in application order, as ``match`` returns them)."""
        found: list[Conflict] = []
        if not self.risky:
            return found
        for i, first in enumerate(groups):
            for second in groups[i + 1 :]:
                if second.priority != first.priority:
                    break
                if (first.name, second.name) not in self.risky:
                    continue
                overlap = self.footprints[first.name].overlap(self.footprints[second.name])
                found.extend(Conflict(first, second, key) for key in overlap)
        return found


@dataclass
class _Layered:
    """Defaults and matching groups applied for one label set."""

    groups: tuple[Group, ...]
    bundles: dict[str, str | None]
    config: dict[str, Any]
    conflicts: list[Conflict]
    state: DesiredState | None = None  # shared by every device without its own overrides


class UnknownBundleVersionError(KernexError):
    """A resolved bundle version is not in the catalog (a fleet built without validation)."""


class Fleet:
    """A loaded, valid fleet revision: settings, catalog, groups and devices."""

    def __init__(
        self,
        settings: FleetSettings,
        catalog: Mapping[str, Mapping[str, BundleVersion]],
        groups: Mapping[str, Group],
        devices: Mapping[str, DeviceSpec],
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.groups = groups
        self.devices = devices
        self.index = GroupIndex(groups.values())
        self._matches: dict[tuple[tuple[str, str], ...], _Layered] = {}
        self._layers: dict[tuple[str, ...], _Layered] = {}

    def resolve_device(self, device_id: str, labels: Mapping[str, str]) -> DesiredState:
        """Desired state of one device; its repo labels override the ``labels`` given.

        Raises ``FleetConflictError`` when equal-priority groups conflict for it.
        """
        state, conflicts = self._resolve(device_id, labels)
        if conflicts:
            raise FleetConflictError(self._conflict_issues({device_id: conflicts}))
        return state

    def resolve(self, inventory: Mapping[str, Mapping[str, str]]) -> dict[str, DesiredState]:
        """Desired state of every inventory device and every device the repo lists.

        ``inventory`` maps device ids to the labels they reported at enrollment. Raises
        ``FleetConflictError`` listing every conflict of every device, if there are any.
        """
        states: dict[str, DesiredState] = {}
        conflicts: dict[str, list[Conflict]] = {}
        for device_id in _union(inventory, self.devices):
            state, found = self._resolve(device_id, inventory.get(device_id, {}))
            states[device_id] = state
            if found:
                conflicts[device_id] = found
        if conflicts:
            raise FleetConflictError(self._conflict_issues(conflicts))
        return states

    def device_labels(self, device_id: str, reported: Mapping[str, str]) -> Mapping[str, str]:
        spec = self.devices.get(device_id)
        if spec is None or not spec.labels:
            return reported
        if not reported:
            return spec.labels
        return {**reported, **spec.labels}

    def matching_groups(self, labels: Mapping[str, str]) -> tuple[Group, ...]:
        return self._layered(labels).groups

    def conflicts_for(self, labels: Mapping[str, str]) -> list[Conflict]:
        """Equal-priority conflicts among the groups matching ``labels`` (cached)."""
        return self._layered(labels).conflicts

    def _resolve(
        self, device_id: str, reported: Mapping[str, str]
    ) -> tuple[DesiredState, list[Conflict]]:
        spec = self.devices.get(device_id)
        layered = self._layered(self.device_labels(device_id, reported))
        if spec is None or not (spec.bundles or spec.config):
            if layered.state is None:
                layered.state = self._state(layered.bundles, layered.config, layered.groups)
            return layered.state, layered.conflicts
        bundles = {**layered.bundles, **spec.bundles}
        config = merge_patch(layered.config, spec.config) if spec.config else layered.config
        return self._state(bundles, config, layered.groups), layered.conflicts

    def _layered(self, labels: Mapping[str, str]) -> _Layered:
        # Two caches: label set -> layers, and matching groups -> layers, since many
        # label sets (one per site, say) end up with the same groups.
        key = tuple(sorted(labels.items()))
        layered = self._matches.get(key)
        if layered is None:
            groups = self.index.match(labels)
            names = tuple(g.name for g in groups)
            layered = self._layers.get(names)
            if layered is None:
                layered = self._layer(groups)
                self._layers[names] = layered
            self._matches[key] = layered
        return layered

    def _layer(self, groups: tuple[Group, ...]) -> _Layered:
        defaults = self.settings.defaults
        bundles = dict(defaults.bundles)
        config = merge_patch({}, defaults.config)
        for group in groups:
            bundles.update(group.bundles)
            if group.config:
                config = merge_patch(config, group.config)
        return _Layered(groups, bundles, config, self.index.conflicts(groups))

    def _state(
        self,
        bundles: Mapping[str, str | None],
        config: Mapping[str, Any],
        groups: tuple[Group, ...],
    ) -> DesiredState:
        chosen: dict[str, BundleVersion] = {}
        for name, version in bundles.items():
            if version is None:
                continue
            entry = self.catalog.get(name, {}).get(version)
            if entry is None:
                raise UnknownBundleVersionError(
                    f"bundle {name}@{version} is not in the catalog",
                    hint="Load fleets with load_fleet(), which checks every reference.",
                )
            chosen[name] = entry
        return DesiredState(
            bundles=MappingProxyType(dict(sorted(chosen.items()))),
            config=MappingProxyType(config),
            groups=tuple(g.name for g in groups),
        )

    @staticmethod
    def _conflict_issues(conflicts: Mapping[str, list[Conflict]]) -> list[ValidationIssue]:
        return conflict_issues(conflicts)


def conflict_issues(by_device: Mapping[str, list[Conflict]]) -> list[ValidationIssue]:
    """One issue per distinct conflict, naming the devices it affects."""
    devices_of: dict[tuple[str, str, KeyPath], list[str]] = {}
    first_seen: dict[tuple[str, str, KeyPath], Conflict] = {}
    for device_id, conflicts in sorted(by_device.items()):
        for conflict in conflicts:
            key = (conflict.first.name, conflict.second.name, conflict.key)
            devices_of.setdefault(key, []).append(device_id)
            first_seen.setdefault(key, conflict)
    return [
        ValidationIssue(
            file=f"groups/{conflict.second.name}.yaml",
            line=None,
            column=None,
            key_path=f"groups.{conflict.second.name}.{'.'.join(conflict.key)}",
            message=conflict.describe(devices_of[key]),
            hint=CONFLICT_HINT,
        )
        for key, conflict in first_seen.items()
    ]


def _union(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    ids = list(first)
    ids.extend(d for d in second if d not in first)
    return ids
