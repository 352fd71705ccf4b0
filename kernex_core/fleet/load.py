"""``load_fleet``: the fleet files of one revision to a ``Fleet``, or every problem at once.

The checks run on plain values (see ``source``) with hand-written validators: a fleet of
ten thousand devices validates in about the time libyaml takes to parse it.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from kernex_core.envelope import Signature
from kernex_core.errors import FleetInvalidError
from kernex_core.fleet.model import (
    API_VERSION,
    BundleVersion,
    Defaults,
    DeviceSpec,
    FleetSettings,
    Group,
    RolloutPolicy,
    TrustedSigner,
)
from kernex_core.fleet.resolve import CONFLICT_HINT, Conflict, Fleet
from kernex_core.fleet.selector import (
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    SelectorSyntaxError,
    parse_selector,
)
from kernex_core.fleet.source import (
    MAX_TOTAL_BYTES,
    IssueCollector,
    KeyPath,
    parse_file,
)
from kernex_core.formats import DURATION_EXAMPLES, NAME_RE, SHA256_RE, VERSION_RE, parse_duration
from kernex_core.protocol import DEVICE_ID_PATTERN

FLEET_FILE = "kernex.yaml"
FLEET_FILE_PATTERNS = ("kernex.yaml", "bundles/*.yaml", "groups/*.yaml", "devices/*.yaml")
FLEET_DIRS = ("bundles", "groups", "devices")

DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}\Z")
PERCENT_RE = re.compile(r"^(\d{1,3})\s*%\Z")
OPENPGP_FPR_RE = re.compile(r"^[0-9A-Fa-f]{40}\Z")
SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+"
)
MAX_CONFIG_DEPTH = 32

SETTINGS_KEYS = frozenset(
    {"apiVersion", "name", "description", "policies", "defaults", "rollout", "trusted_signers"}
)
POLICY_KEYS = frozenset({"offline_after", "manifest_ttl"})
DEFAULTS_KEYS = frozenset({"bundles", "config"})
ROLLOUT_KEYS = frozenset({"waves", "failure_threshold", "pause", "promotion", "auto_rollback"})
SIGNER_KEYS = frozenset({"name", "key"})
BUNDLE_KEYS = frozenset({"name", "description", "versions"})
VERSION_KEYS = frozenset({"sha256", "size", "release_signatures", "url"})
SIGNATURE_KEYS = frozenset({"keyid", "sig"})
GROUP_KEYS = frozenset({"description", "selector", "priority", "bundles", "config", "rollout"})
DEVICE_KEYS = frozenset({"description", "labels", "key_fingerprint", "bundles", "config"})

QUOTE_HINT = "Quote it so YAML keeps it as text, e.g. '1.10' or 'on'."


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


def _stem(path: str) -> str:
    return path.partition("/")[2][: -len(".yaml")]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, date):
        return "date"
    return type(value).__name__


class _Checker:
    """Validators for one file; every problem goes to the shared collector."""

    def __init__(self, collector: IssueCollector, file: str) -> None:
        self.collector = collector
        self.file = file

    def issue(self, path: KeyPath, message: str, hint: str | None = None, **kw: Any) -> None:
        self.collector.add(self.file, path, message, hint, **kw)

    def wrong_type(self, path: KeyPath, value: Any, expected: str) -> None:
        hint = QUOTE_HINT if expected == "a string" and value is not None else None
        self.issue(path, f"expected {expected}, found {_type_name(value)}", hint)

    def mapping(
        self,
        value: Any,
        path: KeyPath,
        allowed: frozenset[str] | None = None,
        required: tuple[str, ...] = (),
    ) -> dict[Any, Any] | None:
        if not isinstance(value, dict):
            self.wrong_type(path, value, "a mapping")
            return None
        for key in value:
            if not isinstance(key, str):
                self.issue((*path, key), f"key {key!r} is not a string", QUOTE_HINT, at_key=True)
            elif allowed is not None and key not in allowed:
                self.collector.unknown_key(self.file, path, key, allowed)
        for key in required:
            if key not in value:
                self.issue(path, f"missing required key '{key}'")
        return value

    def string(
        self, value: Any, path: KeyPath, regex: re.Pattern[str] | None = None, what: str = "value"
    ) -> str | None:
        if not isinstance(value, str):
            self.wrong_type(path, value, "a string")
            return None
        if regex is not None and not regex.match(value):
            self.issue(path, f"'{value}' is not a valid {what}", _FORMAT_HINTS.get(what))
            return None
        return value

    def integer(self, value: Any, path: KeyPath, minimum: int | None = None) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.wrong_type(path, value, "an integer")
            return None
        if minimum is not None and value < minimum:
            self.issue(path, f"must be at least {minimum}, found {value}")
            return None
        return value

    def boolean(self, value: Any, path: KeyPath) -> bool | None:
        if not isinstance(value, bool):
            self.wrong_type(path, value, "true or false")
            return None
        return value

    def duration(self, value: Any, path: KeyPath) -> int | None:
        """Seconds, from an integer or a text like ``90s``, ``5m``, ``1h30m``, ``7d``, ``2w``."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError:
                pass
        self.issue(
            path,
            f"expected a duration, found {value!r}",
            f"Write seconds as an integer, or a duration like {DURATION_EXAMPLES}.",
        )
        return None

    def percent(self, value: Any, path: KeyPath, minimum: int = 0) -> int | None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (m := PERCENT_RE.match(value.strip())):
            number = int(m.group(1))
        if number is None or not minimum <= number <= 100:
            self.issue(
                path,
                f"expected a percentage from {minimum}% to 100%, found {value!r}",
                "Write a whole percentage such as 5% or 25%.",
            )
            return None
        return number

    def config(self, value: Any, path: KeyPath) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.wrong_type(path, value, "a mapping")
            return None
        return value if self._json_like(value, path, 0) else None

    def _json_like(self, value: Any, path: KeyPath, depth: int) -> bool:
        if depth > MAX_CONFIG_DEPTH:
            self.issue(path, f"config nests deeper than {MAX_CONFIG_DEPTH} levels")
            return False
        if isinstance(value, dict):
            good = True
            for key, item in value.items():
                if not isinstance(key, str):
                    self.issue(
                        (*path, key), f"config key {key!r} is not a string", QUOTE_HINT, at_key=True
                    )
                    good = False
                elif not self._json_like(item, (*path, key), depth + 1):
                    good = False
            return good
        if isinstance(value, list):
            results = [self._json_like(v, (*path, i), depth + 1) for i, v in enumerate(value)]
            return all(results)
        if isinstance(value, float) and not math.isfinite(value):
            self.issue(path, "config numbers must be finite", "Use a string or a large number.")
            return False
        if value is None or isinstance(value, str | int | float):
            return True
        self.issue(path, f"a {_type_name(value)} is not allowed in config", QUOTE_HINT)
        return False

    def bundle_refs(self, value: Any, path: KeyPath) -> dict[str, str | None] | None:
        """``{bundle: version}``; a null version removes the bundle."""
        if value is None:
            return {}
        refs = self.mapping(value, path)
        if refs is None:
            return None
        good = True
        for name, version in refs.items():
            if not isinstance(name, str):
                good = False
            elif not NAME_RE.match(name):
                self.issue(
                    (*path, name),
                    f"'{name}' is not a valid bundle name",
                    _FORMAT_HINTS["bundle name"],
                    at_key=True,
                )
                good = False
            elif (
                version is not None
                and self.string(version, (*path, name), VERSION_RE, "version") is None
            ):
                good = False
        return refs if good else None

    def rollout(self, value: Any, path: KeyPath) -> dict[str, Any] | None:
        block = self.mapping(value, path, ROLLOUT_KEYS)
        if block is None:
            return None
        out: dict[str, Any] = {}
        good = True
        if "waves" in block:
            waves = self._waves(block["waves"], (*path, "waves"))
            good &= waves is not None
            out["waves"] = waves
        if "failure_threshold" in block:
            threshold = self.percent(block["failure_threshold"], (*path, "failure_threshold"))
            good &= threshold is not None
            out["failure_threshold"] = threshold
        if "pause" in block:
            pause = self.duration(block["pause"], (*path, "pause"))
            good &= pause is not None
            out["pause"] = pause
        if "promotion" in block:
            promotion = block["promotion"]
            if promotion not in ("auto", "manual"):
                self.issue(
                    (*path, "promotion"), f"promotion must be auto or manual, found {promotion!r}"
                )
                good = False
            elif promotion == "manual" and block.get("pause"):
                self.issue(
                    (*path, "pause"),
                    "a pause and manual promotion exclude each other",
                    "Drop `pause` (waves wait for `kernex rollouts promote`), "
                    "or drop `promotion: manual`.",
                    at_key=True,
                )
                good = False
            out["promotion"] = promotion
        if "auto_rollback" in block:
            auto = self.boolean(block["auto_rollback"], (*path, "auto_rollback"))
            good &= auto is not None
            out["auto_rollback"] = auto
        return out if good else None

    def _waves(self, value: Any, path: KeyPath) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value:
            self.issue(
                path,
                "waves must be a non-empty list of percentages",
                "For example: waves: [5%, 25%, 100%]",
            )
            return None
        waves = [self.percent(v, (*path, i), minimum=1) for i, v in enumerate(value)]
        if any(w is None for w in waves):
            return None
        numbers = [w for w in waves if w is not None]
        for i in range(1, len(numbers)):
            if numbers[i] <= numbers[i - 1]:
                self.issue(
                    (*path, i),
                    "waves must increase (each is a cumulative share)",
                    "For example: waves: [5%, 25%, 100%]",
                )
                return None
        if numbers[-1] != 100:
            self.issue(
                (*path, len(numbers) - 1),
                "the last wave must be 100%",
                "End the list with 100% so the rollout reaches every device.",
            )
            return None
        return tuple(numbers)

    def labels(self, value: Any, path: KeyPath) -> dict[str, str] | None:
        if value is None:
            return {}
        labels = self.mapping(value, path)
        if labels is None:
            return None
        good = True
        for key, label in labels.items():
            if type(label) is str and key in _GOOD_LABEL_KEYS and label in _GOOD_LABEL_VALUES:
                continue  # most labels repeat across devices: skip the patterns
            if not isinstance(key, str):
                good = False
                continue
            if not LABEL_KEY_RE.match(key):
                self.issue(
                    (*path, key),
                    f"'{key}' is not a valid label key",
                    _FORMAT_HINTS["label key"],
                    at_key=True,
                )
                good = False
            elif self.string(label, (*path, key), LABEL_VALUE_RE, "label value") is not None:
                _remember(_GOOD_LABEL_KEYS, key)
                _remember(_GOOD_LABEL_VALUES, label)
                continue
            good = False
        return labels if good else None


_GOOD_LABEL_KEYS: set[str] = set()
_GOOD_LABEL_VALUES: set[str] = set()
_MAX_REMEMBERED = 100_000


def _remember(cache: set[str], value: str) -> None:
    if len(cache) < _MAX_REMEMBERED:
        cache.add(value)


_FORMAT_HINTS = {
    "bundle name": "Names use lowercase letters, digits, '.', '_' and '-' (at most 63).",
    "group name": "Names use lowercase letters, digits, '.', '_' and '-' (at most 63).",
    "device id": "Device ids use lowercase letters, digits, '.', '_' and '-' (at most 63).",
    "version": "Versions use letters, digits and . _ + ~ - (at most 64), e.g. 1.4.0.",
    "sha256": "Write the SHA-256 of the bundle file as 64 lowercase hex digits.",
    "key fingerprint": "Use the form `kernex` prints: SHA256: and 43 base64 characters.",
    "label key": "Label keys look like `ring` or `example.com/ring` (letters, digits, -_.).",
    "label value": "Label values use letters, digits, '-', '_' and '.' (at most 63).",
}


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
        catalog = self._catalog(by_kind["bundle"])
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
        c = _Checker(self.collector, FLEET_FILE)
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

    def _signers(self, c: _Checker, value: Any) -> tuple[TrustedSigner, ...]:
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

    def _catalog(self, paths: list[str]) -> dict[str, dict[str, BundleVersion]]:
        catalog: dict[str, dict[str, BundleVersion]] = {}
        for path in paths:
            stem = _stem(path)
            c = _Checker(self.collector, path)
            if not NAME_RE.match(stem):
                c.issue(
                    (),
                    f"'{stem}' is not a valid bundle name (from the file name)",
                    _FORMAT_HINTS["bundle name"],
                )
            self.known_versions[stem] = set()
            if path not in self.values:
                continue
            doc = c.mapping(self.values[path], (), BUNDLE_KEYS, ("name", "versions"))
            if doc is None:
                continue
            if "name" in doc and doc["name"] != stem:
                c.issue(
                    ("name",),
                    f"name is {doc['name']!r} but the file is {path}",
                    f"Set `name: {stem}`, or rename the file to match.",
                )
            if "description" in doc:
                c.string(doc["description"], ("description",))
            versions = c.mapping(doc.get("versions", {}), ("versions",)) or {}
            entries: dict[str, BundleVersion] = {}
            for version, spec in versions.items():
                if not isinstance(version, str):
                    continue  # reported by mapping()
                self.known_versions[stem].add(version)
                entry = self._bundle_version(c, stem, version, spec)
                if entry is not None:
                    entries[version] = entry
            catalog[stem] = entries
        return catalog

    def _bundle_version(
        self, c: _Checker, name: str, version: str, value: Any
    ) -> BundleVersion | None:
        path: KeyPath = ("versions", version)
        if not VERSION_RE.match(version):
            c.issue(
                path, f"'{version}' is not a valid version", _FORMAT_HINTS["version"], at_key=True
            )
        spec = c.mapping(value, path, VERSION_KEYS, ("sha256", "size"))
        if spec is None or "sha256" not in spec or "size" not in spec:
            return None
        sha = spec["sha256"]
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            c.issue(
                (*path, "sha256"),
                f"sha256 must be 64 lowercase hex digits, found {sha!r}",
                _FORMAT_HINTS["sha256"],
            )
            sha = None
        size = c.integer(spec["size"], (*path, "size"), minimum=0)
        url = spec.get("url")
        if url is not None and not (isinstance(url, str) and url):
            c.wrong_type((*path, "url"), url, "a string")
            url = None
        signatures = self._signatures(
            c, (*path, "release_signatures"), spec.get("release_signatures")
        )
        if sha is None or size is None or signatures is None:
            return None
        return BundleVersion(name, version, sha, size, signatures, url)

    def _signatures(self, c: _Checker, path: KeyPath, value: Any) -> tuple[Signature, ...] | None:
        if value is None:
            return ()
        if not isinstance(value, list):
            c.wrong_type(path, value, "a list")
            return None
        signatures: list[Signature] = []
        good = True
        for i, item in enumerate(value):
            entry = c.mapping(item, (*path, i), SIGNATURE_KEYS, ("keyid", "sig"))
            if entry is None or "keyid" not in entry or "sig" not in entry:
                good = False
                continue
            keyid = c.string(entry["keyid"], (*path, i, "keyid"))
            sig = entry["sig"]
            try:
                raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else None
            except (binascii.Error, ValueError):
                raw = None
            if raw is None:
                c.issue(
                    (*path, i, "sig"),
                    "sig must be base64",
                    "Copy the signature as `kernex bundle build --sign-key` wrote it.",
                )
            if keyid is None or raw is None:
                good = False
                continue
            signatures.append(Signature(keyid, raw))
        return tuple(signatures) if good else None

    # -- groups/ -----------------------------------------------------------------------

    def _groups(self, paths: list[str], settings: FleetSettings | None) -> dict[str, Group]:
        groups: dict[str, Group] = {}
        for path in paths:
            stem = _stem(path)
            c = _Checker(self.collector, path)
            if not NAME_RE.match(stem):
                c.issue(
                    (),
                    f"'{stem}' is not a valid group name (from the file name)",
                    _FORMAT_HINTS["group name"],
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
            stem = _stem(path)
            c = _Checker(self.collector, path)
            if not DEVICE_ID_RE.match(stem):
                c.issue(
                    (),
                    f"'{stem}' is not a valid device id (from the file name)",
                    _FORMAT_HINTS["device id"],
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
        c = _Checker(self.collector, file)
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
