"""``load_fleet``: the fleet files of one revision to a ``Fleet``, or every problem at once.

The checks run on plain values (see ``source``) with hand-written validators
(``checks``): a fleet of ten thousand devices validates in about the time libyaml takes to
parse it. ``kernex.yaml``, ``groups/`` and ``devices/`` are read here, ``bundles/`` in
``catalog``; references between them and group conflicts are checked last.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from kernex_core.errors import FleetInvalidError
from kernex_core.fleet.catalog import read_catalog
from kernex_core.fleet.checks import (
    DEVICE_ID_RE,
    FINGERPRINT_RE,
    FORMAT_HINTS,
    OPENPGP_FPR_RE,
    SSH_KEY_RE,
    Checker,
    file_stem,
)
from kernex_core.fleet.model import (
    API_VERSION,
    Defaults,
    DeviceSpec,
    FleetSettings,
    Group,
    RolloutPolicy,
    TrustedSigner,
)
from kernex_core.fleet.resolve import CONFLICT_HINT, Conflict, Fleet
from kernex_core.fleet.selector import (
    SelectorSyntaxError,
    parse_selector,
)
from kernex_core.fleet.source import (
    MAX_TOTAL_BYTES,
    IssueCollector,
    KeyPath,
    parse_file,
)
from kernex_core.formats import NAME_RE

FLEET_FILE = "kernex.yaml"
FLEET_FILE_PATTERNS = ("kernex.yaml", "bundles/*.yaml", "groups/*.yaml", "devices/*.yaml")
FLEET_DIRS = ("bundles", "groups", "devices")

SETTINGS_KEYS = frozenset(
    {"apiVersion", "name", "description", "policies", "defaults", "rollout", "trusted_signers"}
)
POLICY_KEYS = frozenset({"offline_after", "manifest_ttl"})
DEFAULTS_KEYS = frozenset({"bundles", "config"})
SIGNER_KEYS = frozenset({"name", "key"})
GROUP_KEYS = frozenset({"description", "selector", "priority", "bundles", "config", "rollout"})
DEVICE_KEYS = frozenset({"description", "labels", "key_fingerprint", "bundles", "config"})


def fleet_file_kind(path: str) -> str | None:
    """``settings``, ``bundle``, ``group``, ``device``, or None for a file Kernex ignores."""
    if path == FLEET_FILE:
        return "settings"
    folder, slash, name = path.partition("/")
    if not slash or folder not in FLEET_DIRS or "/" in name:
        return None
    if not name.endswith(".yaml") or name == ".yaml":
        return None
    return folder[:-1]


def is_fleet_file(path: str) -> bool:
    return fleet_file_kind(path) is not None


class _Loader:
    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = files
        self.collector = IssueCollector()
        self.texts: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        # Names that exist even when their file has errors, so one mistake is reported once.
        self.known_versions: dict[str, set[str]] = {}

    def run(self) -> Fleet:
        total = sum(len(raw) for path, raw in self.files.items() if is_fleet_file(path))
        if total > MAX_TOTAL_BYTES:
            self.collector.add_located(
                FLEET_FILE,
                None,
                None,
                f"fleet files total {total} bytes, over the {MAX_TOTAL_BYTES // 2**20} MiB limit",
                "Keep large data out of the fleet repository.",
            )
            raise FleetInvalidError(self.collector.issues({}))
        by_kind: dict[str, list[str]] = {"settings": [], "bundle": [], "group": [], "device": []}
        for path in sorted(self.files):
            kind = fleet_file_kind(path)
            if kind is None:
                continue
            text, value = parse_file(path, self.files[path], self.collector)
            if text is not None:
                self.texts[path] = text
            if value is not None or (text is not None and kind == "device"):
                self.values[path] = value
            elif text is not None:  # parsed to nothing: empty, comments only or `null`
                self.collector.add_located(
                    path, 1, 1, "file is empty", "Write a YAML mapping; see docs/fleet-repo.md."
                )
            by_kind[kind].append(path)
        if not by_kind["settings"]:
            self.collector.add_located(
                FLEET_FILE,
                None,
                None,
                "kernex.yaml is missing",
                "Every fleet repository has kernex.yaml at its root; `kernex init` makes one.",
            )
        catalog = read_catalog(by_kind["bundle"], self.values, self.collector, self.known_versions)
        settings = self._settings()
        groups = self._groups(by_kind["group"], settings)
        devices = self._devices(by_kind["device"])
        self._check_references(settings, groups, devices)
        if self.collector or settings is None:  # settings is None only with an issue
            raise FleetInvalidError(self.collector.issues(self.texts))
        fleet = Fleet(settings, catalog, groups, devices)
        self._check_conflicts(fleet)
        if self.collector:
            raise FleetInvalidError(self.collector.issues(self.texts))
        return fleet

    # -- kernex.yaml -------------------------------------------------------------------

    def _settings(self) -> FleetSettings | None:
        if FLEET_FILE not in self.values:
            return None
        c = Checker(self.collector, FLEET_FILE)
        doc = c.mapping(self.values[FLEET_FILE], (), SETTINGS_KEYS, ("apiVersion", "name"))
        if doc is None:
            return None
        api = doc.get("apiVersion")
        if "apiVersion" in doc and api != API_VERSION:
            c.issue(
                ("apiVersion",),
                f"apiVersion must be {API_VERSION}, found {api!r}",
                f"This Kernex reads `apiVersion: {API_VERSION}`.",
            )
        name = c.string(doc.get("name"), ("name",)) if "name" in doc else ""
        if "description" in doc:
            c.string(doc["description"], ("description",))
        offline_after: int | None = None  # unset: the server's own value applies
        manifest_ttl: int | None = None
        if "policies" in doc:
            policies = c.mapping(doc["policies"], ("policies",), POLICY_KEYS) or {}
            if "offline_after" in policies:
                offline_after = (
                    c.duration(policies["offline_after"], ("policies", "offline_after")) or None
                )
            if "manifest_ttl" in policies:
                ttl = c.duration(policies["manifest_ttl"], ("policies", "manifest_ttl"))
                if ttl == 0:
                    c.issue(("policies", "manifest_ttl"), "manifest_ttl must be positive")
                manifest_ttl = ttl or None
        defaults = Defaults()
        if "defaults" in doc:
            block = c.mapping(doc["defaults"], ("defaults",), DEFAULTS_KEYS) or {}
            defaults = Defaults(
                bundles=c.bundle_refs(block.get("bundles"), ("defaults", "bundles")) or {},
                config=c.config(block.get("config"), ("defaults", "config")) or {},
            )
        rollout = None
        if "rollout" in doc:
            fields = c.rollout(doc["rollout"], ("rollout",))
            rollout = RolloutPolicy(**fields) if fields is not None else None
        signers = self._signers(c, doc.get("trusted_signers"))
        return FleetSettings(
            name=name or "",
            offline_after=offline_after,
            manifest_ttl=manifest_ttl,
            defaults=defaults,
            rollout=rollout,
            trusted_signers=signers,
        )

    def _signers(self, c: Checker, value: Any) -> tuple[TrustedSigner, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            c.wrong_type(("trusted_signers",), value, "a list")
            return ()
        signers = []
        for i, item in enumerate(value):
            path: KeyPath = ("trusted_signers", i)
            entry = c.mapping(item, path, SIGNER_KEYS, ("name", "key"))
            if entry is None or "name" not in entry or "key" not in entry:
                continue
            name = c.string(entry["name"], (*path, "name"))
            key = c.string(entry["key"], (*path, "key"))
            if key is not None and not (SSH_KEY_RE.match(key) or OPENPGP_FPR_RE.match(key)):
                c.issue(
                    (*path, "key"),
                    "key must be an SSH public key or an OpenPGP fingerprint",
                    "Paste a line of ~/.ssh/id_ed25519.pub, or the 40 hex digits "
                    "`gpg --fingerprint` prints.",
                )
            elif name is not None and key is not None:
                signers.append(TrustedSigner(name, key))
        return tuple(signers)

    # -- bundles/ ----------------------------------------------------------------------

    # -- groups/ -----------------------------------------------------------------------

    def _groups(self, paths: list[str], settings: FleetSettings | None) -> dict[str, Group]:
        groups: dict[str, Group] = {}
        for path in paths:
            stem = file_stem(path)
            c = Checker(self.collector, path)
            if not NAME_RE.match(stem):
                c.issue(
                    (),
                    f"'{stem}' is not a valid group name (from the file name)",
                    FORMAT_HINTS["group name"],
                )
            if path not in self.values:
                continue
            doc = c.mapping(self.values[path], (), GROUP_KEYS, ("selector",))
            if doc is None:
                continue
            selector = None
            text = c.string(doc["selector"], ("selector",)) if "selector" in doc else None
            if text is not None:
                try:
                    selector = parse_selector(text)
                except SelectorSyntaxError as exc:
                    c.issue(
                        ("selector",),
                        f"selector syntax error: {exc.message}",
                        "Selectors read like `ring=canary, region in (eu, us), !legacy`.",
                        col_offset=exc.column,
                    )
            priority = c.integer(doc.get("priority", 0), ("priority",))
            bundles = c.bundle_refs(doc.get("bundles"), ("bundles",))
            config = c.config(doc.get("config"), ("config",))
            if "description" in doc:
                c.string(doc["description"], ("description",))
            rollout = settings.rollout if settings is not None else None
            if "rollout" in doc:
                fields = c.rollout(doc["rollout"], ("rollout",))
                if fields is not None:
                    base = rollout.to_dict() if rollout is not None else {}
                    merged = {**base, **fields}
                    if "pause" not in fields and merged.get("promotion") == "manual":
                        merged["pause"] = 0
                    if "pause" in fields and "promotion" not in fields:
                        merged["promotion"] = "auto"
                    if "waves" in merged:
                        merged["waves"] = tuple(merged["waves"])
                    rollout = RolloutPolicy(**merged)
            if selector is None or priority is None or bundles is None or config is None:
                continue
            groups[stem] = Group(stem, selector, priority, bundles, config, rollout)
        return groups

    # -- devices/ ----------------------------------------------------------------------

    def _devices(self, paths: list[str]) -> dict[str, DeviceSpec]:
        devices: dict[str, DeviceSpec] = {}
        seen: dict[str, str] = {}
        for path in paths:
            stem = file_stem(path)
            c = Checker(self.collector, path)
            if not DEVICE_ID_RE.match(stem):
                c.issue(
                    (),
                    f"'{stem}' is not a valid device id (from the file name)",
                    FORMAT_HINTS["device id"],
                )
            folded = stem.casefold()
            if folded in seen:
                c.issue(
                    (),
                    f"device id '{stem}' clashes with {seen[folded]}",
                    "Device ids are compared without case; keep one file per device.",
                )
                continue
            seen[folded] = path
            if path not in self.values:
                continue
            value = self.values[path]
            doc = c.mapping(value if value is not None else {}, (), DEVICE_KEYS)
            if doc is None:
                continue
            labels = c.labels(doc.get("labels"), ("labels",))
            fingerprint = doc.get("key_fingerprint")
            if fingerprint is not None:
                fingerprint = c.string(
                    fingerprint, ("key_fingerprint",), FINGERPRINT_RE, "key fingerprint"
                )
            bundles = c.bundle_refs(doc.get("bundles"), ("bundles",))
            config = c.config(doc.get("config"), ("config",))
            if "description" in doc:
                c.string(doc["description"], ("description",))
            if labels is None or bundles is None or config is None:
                continue
            devices[stem] = DeviceSpec(stem, labels, fingerprint, bundles, config)
        return devices

    # -- across files ------------------------------------------------------------------

    def _check_references(
        self,
        settings: FleetSettings | None,
        groups: Mapping[str, Group],
        devices: Mapping[str, DeviceSpec],
    ) -> None:
        if settings is not None:
            self._check_refs(FLEET_FILE, ("defaults", "bundles"), settings.defaults.bundles)
        for name, group in groups.items():
            self._check_refs(f"groups/{name}.yaml", ("bundles",), group.bundles)
        for device_id, device in devices.items():
            self._check_refs(f"devices/{device_id}.yaml", ("bundles",), device.bundles)

    def _check_refs(self, file: str, path: KeyPath, refs: Mapping[str, str | None]) -> None:
        c = Checker(self.collector, file)
        for name, version in refs.items():
            known = self.known_versions.get(name)
            if known is None:
                close = [n for n in self.known_versions if _close(n, name)]
                hint = f"Did you mean '{close[0]}'? " if close else ""
                c.issue(
                    (*path, name),
                    f"bundle '{name}' is not in the catalog",
                    hint + f"Add bundles/{name}.yaml with `kernex bundle push`.",
                    at_key=True,
                )
            elif version is not None and version not in known:
                listed = ", ".join(sorted(known)) or "none"
                c.issue(
                    (*path, name),
                    f"version '{version}' of bundle '{name}' is not in the catalog",
                    f"Known versions: {listed}. Push it with `kernex bundle "
                    "push` first, so the commit pins its sha256.",
                )

    def _check_conflicts(self, fleet: Fleet) -> None:
        """Equal-priority conflicts for the devices the repository lists."""
        found: dict[tuple[str, str, KeyPath], tuple[Conflict, list[str]]] = {}
        if fleet.index.risky:
            for device_id, device in sorted(fleet.devices.items()):
                for conflict in fleet.conflicts_for(device.labels):
                    ident = (conflict.first.name, conflict.second.name, conflict.key)
                    found.setdefault(ident, (conflict, []))[1].append(device_id)
        for conflict, device_ids in found.values():
            self.collector.add(
                f"groups/{conflict.second.name}.yaml",
                conflict.key,
                conflict.describe(device_ids),
                CONFLICT_HINT,
                at_key=True,
                display_path=f"groups.{conflict.second.name}.{'.'.join(conflict.key)}",
            )


def _close(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def load_fleet(files: Mapping[str, bytes]) -> Fleet:
    """Validate and load the fleet files of one revision (path -> bytes).

    Paths are relative to the repository root with ``/`` separators; files that are not
    fleet files (see ``FLEET_FILE_PATTERNS``) are ignored. Raises ``FleetInvalidError``
    carrying every issue found, each located by file, line and column.
    """
    return _Loader(files).run()
